"""Deploying a provisioned federation: container entrypoint, Kubernetes manifests.

from shoal.deploy import K8sOptions, write_helm, write_manifests
write_manifests(Path("workspace/example_project/prod_00"), Path("k8s"), K8sOptions(tag="0.1.0"))
write_helm(Path("workspace/example_project/prod_00"), Path("helm"), K8sOptions(tag="0.1.0"))
"""

from __future__ import annotations

from shoal.deploy.helm import write_helm
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
    "write_helm",
    "write_manifests",
]
