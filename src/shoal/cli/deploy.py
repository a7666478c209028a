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
from shoal.deploy.gcp import iam_script
from shoal.deploy.helm import helm_releases, write_helm
from shoal.deploy.k8s import site_server_address, write_manifests
from shoal.deploy.kits import ProdDir, read_prod_dir
from shoal.deploy.objects import admin_service_name
from shoal.deploy.options import Exposure, K8sOptions
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
        epilog="No private keys are written unless --secrets generate: then keep OUT as "
        "private as the kits.",
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
    add_k8s_options(k8s)
    k8s.set_defaults(func=run_k8s)

    helm = targets.add_parser(
        "helm",
        help="Helm charts (shoal-server, shoal-site) and a values file per participant",
        description=(
            "Write the shoal-server and shoal-site charts and one values file per "
            "participant, rendering what `shoal deploy k8s` writes for the same options. "
            "The charts never hold keys: they mount the Secret shoal-startup (secrets.sh)."
        ),
    )
    helm.add_argument(
        "--prod-dir",
        type=Path,
        required=True,
        metavar="DIR",
        help="the provisioned WORKSPACE/<project>/prod_NN folder",
    )
    helm.add_argument(
        "-o",
        "--out",
        type=Path,
        metavar="DIR",
        help="output folder (default: WORKSPACE/<project>/helm/prod_NN); replaced if it "
        "holds an earlier output",
    )
    add_k8s_options(helm)
    helm.set_defaults(func=run_helm)


def add_k8s_options(parser: argparse.ArgumentParser) -> None:
    """The options `shoal deploy k8s` and `shoal deploy helm` share."""
    image = parser.add_argument_group("image")
    image.add_argument("--image", default="shoal", help="image repository (default: shoal)")
    image.add_argument("--tag", default=__version__, help=f"image tag (default: {__version__})")
    image.add_argument(
        "--digest", metavar="SHA256", help="pin the image: sha256:... (then pulled IfNotPresent)"
    )
    image.add_argument(
        "--gpu-tag", metavar="TAG", help="tag of the CUDA image for GPU sites (default: TAG-cuda)"
    )
    image.add_argument("--gpu-digest", metavar="SHA256", help="pin the CUDA image: sha256:...")
    image.add_argument(
        "--pull-policy",
        choices=("Always", "IfNotPresent"),
        help="default: IfNotPresent with --digest, else Always (a tag can move; "
        "IfNotPresent with a tag is refused)",
    )
    image.add_argument(
        "--image-pull-secret",
        action="append",
        default=[],
        metavar="NAME",
        help="existing registry Secret in each namespace (repeatable)",
    )
    image.add_argument(
        "--init",
        choices=("pod", "tini", "none"),
        default="pod",
        help="PID 1 that reaps orphans: the pod's pause process (shareProcessNamespace), "
        "tini from the image, or none (default: pod)",
    )

    storage = parser.add_argument_group("storage")
    storage.add_argument(
        "--data-claim",
        metavar="PVC",
        help="existing PVC (in every namespace) mounted read-only at /data in the server "
        "and every site, for job code's data sets (SHOAL_DATA_PATHS=/data)",
    )
    storage.add_argument(
        "--mnist-file",
        default="mnist.npz",
        metavar="NAME",
        help="MNIST inside --data-claim: SHOAL_MNIST_PATH=/data/NAME (default: mnist.npz)",
    )
    storage.add_argument("--storage-class", metavar="NAME", help="StorageClass of workspace PVCs")
    storage.add_argument(
        "--storage-size", default="10Gi", metavar="SIZE", help="workspace size (default: 10Gi)"
    )
    storage.add_argument(
        "--retain-provisioner",
        metavar="CSI",
        help="also write a StorageClass (--storage-class, default shoal-retain) for this "
        "provisioner (e.g. pd.csi.storage.gke.io) with reclaimPolicy Retain",
    )
    storage.add_argument(
        "--bucket",
        metavar="NAME",
        help="back workspaces with GCS (GCS FUSE CSI driver): one bucket with a folder per "
        "participant, or with {participant} in NAME a bucket each",
    )
    storage.add_argument(
        "--bucket-for",
        choices=("all", "sites"),
        default="all",
        help="who gets a bucket workspace; the server's database stays on a disk either "
        "way (default: all)",
    )
    storage.add_argument(
        "--state-size",
        default="1Gi",
        metavar="SIZE",
        help="the server's database disk with a bucket workspace (default: 1Gi)",
    )

    net = parser.add_argument_group("network")
    net.add_argument(
        "--service-type",
        choices=("ClusterIP", "LoadBalancer"),
        default="ClusterIP",
        help="the site port's Service; LoadBalancer for sites outside the cluster",
    )
    net.add_argument(
        "--lb-source-range",
        action="append",
        default=[],
        metavar="CIDR",
        help="who may reach the site port's load balancer (repeatable)",
    )
    net.add_argument("--lb-ip", metavar="IP", help="reserved static IP of the site port's LB")
    net.add_argument(
        "--internal-lb", action="store_true", help="site port: internal (VPC) load balancer"
    )
    net.add_argument(
        "--admin-service-type",
        choices=("ClusterIP", "LoadBalancer"),
        default="ClusterIP",
        help="the admin port's own Service (default ClusterIP: kubectl port-forward)",
    )
    net.add_argument(
        "--admin-source-range",
        action="append",
        default=[],
        metavar="CIDR",
        help="who may reach the admin load balancer (repeatable)",
    )
    net.add_argument("--admin-lb-ip", metavar="IP", help="reserved static IP of the admin LB")
    net.add_argument(
        "--admin-internal-lb", action="store_true", help="admin: internal (VPC) load balancer"
    )
    net.add_argument(
        "--server-address",
        action="append",
        default=[],
        metavar="[SITE=]HOST:PORT",
        help="what sites dial (a DNS name or IP, for sites outside the server's cluster); "
        "SITE= for one site (repeatable; default: the Service's cluster DNS name)",
    )

    parser.add_argument(
        "--secrets",
        choices=("reference", "generate"),
        default="reference",
        help="reference: pods mount an existing Secret shoal-startup (secrets.sh makes it), "
        "no keys in OUT; generate: copy the keys into OUT (default: reference)",
    )
    parser.add_argument(
        "--gpu",
        action="append",
        default=[],
        metavar="SITE=N",
        help="GPUs for a site (repeatable); overrides the site's local/resources.json",
    )
    parser.add_argument(
        "--gpu-node-selector",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="node label for GPU sites (repeatable; default from resources.json gpu_type: "
        "cloud.google.com/gke-accelerator=TYPE)",
    )
    parser.add_argument(
        "--site-health-port",
        type=int,
        default=8004,
        metavar="PORT",
        help="grpc.health.v1 port of the site daemons (default: 8004)",
    )
    parser.add_argument(
        "--no-pdb", action="store_true", help="no PodDisruptionBudgets (drains evict at once)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=9090,
        metavar="PORT",
        help="port of each daemon's Prometheus /metrics in its pod, scraped by "
        "prometheus.io/* annotations (default: 9090)",
    )
    parser.add_argument(
        "--no-metrics", action="store_true", help="no metrics port, annotations or scrape rule"
    )
    parser.add_argument(
        "--service-monitor",
        action="store_true",
        help="also a Service and a Prometheus Operator ServiceMonitor per participant",
    )


def _pairs(values: list[str], flag: str, example: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key or not val:
            raise ConfigError(f"{flag} {value!r}: expected {example}")
        out[key] = val
    return out


def _parse_gpus(values: list[str]) -> dict[str, int]:
    gpus: dict[str, int] = {}
    for site, count in _pairs(values, "--gpu", "SITE=N, e.g. site-1=1").items():
        if not count.isdigit():
            raise ConfigError(f"--gpu {site}={count!r}: expected SITE=N, e.g. site-1=1")
        gpus[site] = int(count)
    return gpus


def options_from_args(args: argparse.Namespace) -> K8sOptions:
    everyone = [a for a in args.server_address if "=" not in a]
    if len(everyone) > 1:
        raise ConfigError("--server-address without SITE= given more than once")
    per_site = _pairs(
        [a for a in args.server_address if "=" in a], "--server-address", "SITE=HOST:PORT"
    )
    return K8sOptions(
        image=args.image,
        tag=args.tag,
        digest=args.digest,
        gpu_tag=args.gpu_tag,
        gpu_digest=args.gpu_digest,
        pull_policy=args.pull_policy,
        image_pull_secrets=tuple(args.image_pull_secret),
        storage_class=args.storage_class,
        storage_size=args.storage_size,
        retain_provisioner=args.retain_provisioner,
        bucket=args.bucket,
        bucket_for=args.bucket_for,
        state_size=args.state_size,
        fed=Exposure(
            type=args.service_type,
            source_ranges=tuple(args.lb_source_range),
            internal=args.internal_lb,
            ip=args.lb_ip,
        ),
        admin=Exposure(
            type=args.admin_service_type,
            source_ranges=tuple(args.admin_source_range),
            internal=args.admin_internal_lb,
            ip=args.admin_lb_ip,
        ),
        server_address=everyone[0] if everyone else None,
        site_server_addresses=per_site,
        secrets=args.secrets,
        gpus=_parse_gpus(args.gpu),
        gpu_node_selector=_pairs(args.gpu_node_selector, "--gpu-node-selector", "KEY=VALUE"),
        site_health_port=args.site_health_port,
        pdb=not args.no_pdb,
        metrics_port=None if args.no_metrics else args.metrics_port,
        service_monitor=args.service_monitor,
        init=args.init,
        data_claim=args.data_claim,
        mnist_file=args.mnist_file,
    )


def run_k8s(args: argparse.Namespace) -> int:
    prod_dir: Path = args.prod_dir
    out: Path = args.out or prod_dir.parent / "k8s" / prod_dir.name
    options = options_from_args(args)
    prod = read_prod_dir(prod_dir)
    files = write_manifests(prod_dir, out, options)
    print(f"wrote {len(files)} files to {out}")
    _print_participants(prod, options)
    if options.secrets == "reference":
        print(
            f"first: create each namespace's Secret shoal-startup: sh {out / 'secrets.sh'} "
            "(or External Secrets / Secret Manager, see docs/deploy-kubernetes.md)"
        )
    if options.bucket:
        print(f"bucket access (Workload Identity), once: sh {out / 'gcp-iam.sh'}")
        print(iam_script(prod, options), end="")
    print(f"next: kubectl apply -k {out}")
    _print_admin_hint(prod, options)
    return 0


def _print_participants(prod: ProdDir, options: K8sOptions) -> None:
    server = prod.server
    print(f"  {server.name:<24} namespace {server.namespace:<20} service {server.service_host}")
    for site in prod.sites:
        gpus = options.gpus.get(site.name, site.gpus)
        extra = f"  gpus {gpus}" if gpus else ""
        dials = site_server_address(prod, site, options)
        print(f"  {site.name:<24} namespace {site.namespace:<20} dials {dials}{extra}")


def _print_admin_hint(prod: ProdDir, options: K8sOptions) -> None:
    server = prod.server
    if options.admin.type == "ClusterIP":
        print(
            f"admin: kubectl -n {server.namespace} port-forward svc/{admin_service_name(server)} "
            f"{server.admin_port}:{server.admin_port}, then "
            f"shoal admin --kit <admin kit> --server localhost:{server.admin_port}"
        )


def run_helm(args: argparse.Namespace) -> int:
    prod_dir: Path = args.prod_dir
    out: Path = args.out or prod_dir.parent / "helm" / prod_dir.name
    options = options_from_args(args)
    prod = read_prod_dir(prod_dir)
    releases = helm_releases(prod, options)
    files = write_helm(prod_dir, out, options)
    print(f"wrote {len(files)} files to {out}")
    _print_participants(prod, options)
    print(f"first: create each namespace's Secret shoal-startup: sh {out / 'secrets.sh'}")
    if options.bucket:
        print(f"bucket access (Workload Identity), once: sh {out / 'gcp-iam.sh'}")
    if options.retain_provisioner:
        print(f"the Retain StorageClass, once: kubectl apply -f {out / 'storageclass.yaml'}")
    print("then, one release per participant (each site may run only its own):")
    for release in releases:
        print(f"  {release.command(out)}")
    _print_admin_hint(prod, options)
    return 0
