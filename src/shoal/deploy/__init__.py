"""Deploying a provisioned federation: container entrypoint, Kubernetes manifests.

from shoal.deploy import K8sOptions, write_manifests
write_manifests(Path("workspace/example_project/prod_00"), Path("k8s"), K8sOptions(tag="0.1.0"))
"""

from __future__ import annotations

from shoal.deploy.k8s import write_manifests
from shoal.deploy.kits import AdminKit, ProdDir, ServerKit, SiteKit, read_prod_dir
from shoal.deploy.options import Exposure, K8sOptions

__all__ = [
    "AdminKit",
    "Exposure",
    "K8sOptions",
    "ProdDir",
    "ServerKit",
    "SiteKit",
    "read_prod_dir",
    "write_manifests",
]
