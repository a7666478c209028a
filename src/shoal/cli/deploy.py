"""``shoal deploy``: deployment manifests for a provisioned federation.

    shoal deploy k8s --prod-dir workspace/example_project/prod_00 -o k8s --tag 0.1.0
    kubectl apply -k k8s                  # every participant, one namespace each
    kubectl apply -k k8s/overlays/site-1  # or one participant, e.g. in its own cluster

See docs/deploy-kubernetes.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from shoal import __version__
from shoal.deploy.k8s import K8sOptions, write_manifests
from shoal.deploy.kits import read_prod_dir
from shoal.errors import ConfigError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "deploy",
        help="write deployment manifests (Kubernetes) for a provisioned federation",
        description="Write deployment manifests for the startup kits of one prod_NN folder.",
    )
    targets = parser.add_subparsers(dest="deploy_target", metavar="TARGET", required=True)
    k8s = targets.add_parser(
        "k8s",
        help="kustomize tree: a namespace, Secret and Deployment per participant",
        description=(
            "Write a kustomize tree: base/ (server and client templates), one overlay per "
            "participant (its namespace, its kit's startup/ as a Secret, its workspace "
            "volume), and a top-level kustomization.yaml including every overlay. "
            "Apply with `kubectl apply -k OUT`."
        ),
        epilog="The overlays hold copies of the private keys: keep OUT as private as the kits.",
    )
    k8s.add_argument(
        "--prod-dir",
        type=Path,
        required=True,
        metavar="DIR",
        help="the provisioned WORKSPACE/<project>/prod_NN folder",
    )
    k8s.add_argument(
        "-o",
        "--out",
        type=Path,
        metavar="DIR",
        help="output folder (default: WORKSPACE/<project>/k8s/prod_NN); replaced if it "
        "holds an earlier output",
    )
    k8s.add_argument("--image", default="shoal", help="image repository (default: shoal)")
    k8s.add_argument("--tag", default=__version__, help=f"image tag (default: {__version__})")
    k8s.add_argument(
        "--gpu-tag", metavar="TAG", help="tag of the CUDA image for GPU sites (default: TAG-cuda)"
    )
    k8s.add_argument("--storage-class", metavar="NAME", help="StorageClass of workspace PVCs")
    k8s.add_argument(
        "--storage-size", default="10Gi", metavar="SIZE", help="workspace size (default: 10Gi)"
    )
    k8s.add_argument(
        "--bucket",
        metavar="NAME",
        help="back each workspace with a folder of this GCS bucket (GCS FUSE CSI driver)",
    )
    k8s.add_argument(
        "--service-type",
        choices=("ClusterIP", "LoadBalancer"),
        default="ClusterIP",
        help="type of the server's Service; LoadBalancer lets an admin workstation "
        "connect without port-forward (default: ClusterIP)",
    )
    k8s.add_argument(
        "--gpu",
        action="append",
        default=[],
        metavar="SITE=N",
        help="GPUs for a site (repeatable); overrides the site's local/resources.json",
    )
    k8s.add_argument(
        "--site-health-port",
        type=int,
        default=8004,
        metavar="PORT",
        help="grpc.health.v1 port of the site daemons (default: 8004)",
    )
    k8s.set_defaults(func=run_k8s)


def _parse_gpus(values: list[str]) -> dict[str, int]:
    gpus: dict[str, int] = {}
    for value in values:
        site, sep, count = value.partition("=")
        if not sep or not site or not count.isdigit():
            raise ConfigError(f"--gpu {value!r}: expected SITE=N, e.g. site-1=1")
        gpus[site] = int(count)
    return gpus


def run_k8s(args: argparse.Namespace) -> int:
    prod_dir: Path = args.prod_dir
    out: Path = args.out or prod_dir.parent / "k8s" / prod_dir.name
    options = K8sOptions(
        image=args.image,
        tag=args.tag,
        gpu_tag=args.gpu_tag,
        storage_class=args.storage_class,
        storage_size=args.storage_size,
        bucket=args.bucket,
        service_type=args.service_type,
        gpus=_parse_gpus(args.gpu),
        site_health_port=args.site_health_port,
    )
    prod = read_prod_dir(prod_dir)
    files = write_manifests(prod_dir, out, options)
    server = prod.server
    print(f"wrote {len(files)} files to {out}")
    print(f"  {server.name:<24} namespace {server.namespace:<20} service {server.service_host}")
    for site in prod.sites:
        gpus = options.gpus.get(site.name, site.gpus)
        extra = f"  gpus {gpus}" if gpus else ""
        print(f"  {site.name:<24} namespace {site.namespace:<20}{extra}")
    print(f"next: kubectl apply -k {out}")
    if options.service_type == "ClusterIP":
        print(
            f"admin: kubectl -n {server.namespace} port-forward svc/{server.service} "
            f"{server.admin_port}:{server.admin_port}, then "
            f"shoal admin --kit <admin kit> --server localhost:{server.admin_port}"
        )
    return 0
