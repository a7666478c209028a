"""Deploying a provisioned federation: container entrypoint, Kubernetes manifests.

from shoal.deploy import K8sOptions, write_manifests
write_manifests(Path("workspace/example_project/prod_00"), Path("k8s"), K8sOptions(tag="0.1.0"))
"""

from __future__ import annotations

from shoal.deploy.k8s import K8sOptions, write_manifests
from shoal.deploy.kits import AdminKit, ProdDir, ServerKit, SiteKit, read_prod_dir

__all__ = [
    "AdminKit",
    "K8sOptions",
    "ProdDir",
    "ServerKit",
    "SiteKit",
    "read_prod_dir",
    "write_manifests",
]
