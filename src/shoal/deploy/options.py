"""What `shoal deploy k8s` and `shoal deploy helm` can be asked for, checked once.

options = K8sOptions(tag="0.1.0", bucket="acme-fl", admin=Exposure(type="LoadBalancer",
                     source_ranges=("203.0.113.0/24",), internal=True))
check_options(options, prod)   # ConfigError naming the bad option
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from shoal import __version__
from shoal.deploy.kits import ProdDir
from shoal.errors import ConfigError

__all__ = [
    "Exposure",
    "K8sOptions",
    "check_address",
    "check_options",
    "pull_policy",
    "storage_class",
]

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_HOST_PORT = re.compile(r"(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})")


@dataclass(frozen=True)
class Exposure:
    """How one of the server's ports is reached from outside its namespace."""

    type: Literal["ClusterIP", "LoadBalancer"] = "ClusterIP"
    """``ClusterIP`` (in-cluster, or ``kubectl port-forward``) or ``LoadBalancer``."""
    source_ranges: tuple[str, ...] = ()
    """CIDRs allowed through the load balancer (``loadBalancerSourceRanges``)."""
    internal: bool = False
    """An internal (VPC-only) load balancer: GKE's ``networking.gke.io/load-balancer-type``."""
    ip: str | None = None
    """A reserved static address for the load balancer (``loadBalancerIP``)."""
    annotations: Mapping[str, str] = field(default_factory=dict)
    """Extra Service annotations (another cloud's internal-LB switch, ...)."""


@dataclass(frozen=True)
class K8sOptions:
    """How the manifests are parameterised; every field has a working default."""

    image: str = "shoal"
    """Image repository, e.g. ``europe-docker.pkg.dev/proj/repo/shoal``."""
    tag: str = __version__
    """Image tag for the server and CPU sites."""
    digest: str | None = None
    """``sha256:...`` of the image: pinned, so every node runs the same bytes."""
    gpu_tag: str | None = None
    """Tag of the CUDA build for GPU sites; default ``<tag>-cuda``."""
    gpu_digest: str | None = None
    """``sha256:...`` of the CUDA image."""
    pull_policy: Literal["Always", "IfNotPresent"] | None = None
    """Default: ``IfNotPresent`` for an image by digest, ``Always`` for a tag (a tag can move)."""
    image_pull_secrets: tuple[str, ...] = ()
    """Existing Secrets (type dockerconfigjson) in each namespace for a private registry."""
    storage_class: str | None = None
    """StorageClass of the workspace PVCs; the cluster default when None."""
    storage_size: str = "10Gi"
    """Requested size of each workspace PVC."""
    retain_provisioner: str | None = None
    """Also write a StorageClass (``storage_class``, default ``shoal-retain``) for this
    CSI provisioner with ``reclaimPolicy: Retain``, so deleting a namespace keeps its data."""
    bucket: str | None = None
    """GCS bucket behind the workspaces (GCS FUSE CSI). With ``{participant}`` in it,
    one bucket per participant; else one bucket, a folder per participant."""
    bucket_for: Literal["all", "sites"] = "all"
    """Who gets a bucket workspace: everyone (the server's database stays on a disk
    either way) or only the sites (the server keeps a disk for everything)."""
    state_size: str = "1Gi"
    """Size of the server's disk for its database when its workspace is a bucket."""
    fed: Exposure = field(default_factory=Exposure)
    """The site port's Service (the one sites dial)."""
    admin: Exposure = field(default_factory=Exposure)
    """The admin port's Service: separate, so it is never public by accident."""
    server_address: str | None = None
    """HOST:PORT every site dials (a DNS name or IP outside the cluster); default the
    server Service's cluster DNS name."""
    site_server_addresses: Mapping[str, str] = field(default_factory=dict)
    """HOST:PORT per site name, over ``server_address``."""
    secrets: Literal["reference", "generate"] = "reference"
    """``reference``: the pods mount an existing Secret ``shoal-startup`` (made out of
    band: kubectl, External Secrets, Secret Manager); ``generate``: copy the kits'
    keys into the overlays and let kustomize make it."""
    gpus: Mapping[str, int] = field(default_factory=dict)
    """GPUs per site name; overrides what ``local/resources.json`` says."""
    gpu_node_selector: Mapping[str, str] = field(default_factory=dict)
    """Node labels GPU sites must run on; default from the site's ``gpu_type``
    (``cloud.google.com/gke-accelerator``)."""
    site_health_port: int = 8004
    """Port each site daemon serves grpc.health.v1 on (``--health-port``)."""
    metrics_port: int | None = 9090
    """Port each daemon serves Prometheus metrics on in its pod (``--metrics-port``,
    bound on the pod's address); the pods carry ``prometheus.io/*`` scrape
    annotations and the NetworkPolicy admits the port. None: no metrics."""
    service_monitor: bool = False
    """Also a ``shoal-metrics`` Service and a Prometheus Operator ServiceMonitor per
    participant (needs the operator's CRDs in the cluster)."""
    pdb: bool = True
    """A PodDisruptionBudget per participant: a drain waits rather than evicting a
    running round (an unhealthy pod may always be evicted)."""
    init: Literal["pod", "tini", "none"] = "pod"
    """Who reaps orphaned processes as PID 1: the pod's pause process
    (``shareProcessNamespace``), ``tini`` from the image, or nobody."""
    data_claim: str | None = None
    """An existing PVC (same name in every participant's namespace, e.g. a
    ``ReadOnlyMany`` copy of the data sets) mounted read-only at ``/data`` in
    the server *and* every site: job code on either side may need data
    (hello-tf2 trains on the sites and evaluates on the server). Job code may
    read it (``SHOAL_DATA_PATHS``) and finds MNIST at ``SHOAL_MNIST_PATH``."""
    mnist_file: str = "mnist.npz"
    """MNIST's file inside ``data_claim`` (``SHOAL_MNIST_PATH=/data/<mnist_file>``)."""


#: Name of the StorageClass written for ``retain_provisioner`` without ``storage_class``.
RETAIN_CLASS = "shoal-retain"


def storage_class(options: K8sOptions) -> str | None:
    """The StorageClass the disks (PVCs) ask for; None: the cluster's default."""
    return options.storage_class or (RETAIN_CLASS if options.retain_provisioner else None)


def pull_policy(options: K8sOptions, *, gpu: bool = False) -> str:
    """The imagePullPolicy of the CPU (or the ``gpu``) image (see ``K8sOptions.pull_policy``)."""
    if options.pull_policy:
        return options.pull_policy
    return "IfNotPresent" if (options.gpu_digest if gpu else options.digest) else "Always"


def _check_exposure(what: str, e: Exposure) -> None:
    if e.type not in ("ClusterIP", "LoadBalancer"):
        raise ConfigError(f"{what} service type {e.type!r}: use ClusterIP or LoadBalancer")
    if e.type != "LoadBalancer" and (e.source_ranges or e.internal or e.ip):
        raise ConfigError(
            f"{what}: source ranges, an internal load balancer or a static IP need "
            "service type LoadBalancer"
        )
    for cidr in e.source_ranges:
        try:
            ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            raise ConfigError(f"{what} source range {cidr!r}: {exc}") from None
    if e.ip is not None:
        try:
            ipaddress.ip_address(e.ip)
        except ValueError:
            raise ConfigError(f"{what} static IP {e.ip!r}: not an IP address") from None


def check_address(value: str, what: str) -> None:
    match = _HOST_PORT.fullmatch(value)
    if not match or not 0 < int(match["port"]) < 65536:
        raise ConfigError(f"{what} {value!r}: expected HOST:PORT (a DNS name or IP, and a port)")


def check_options(options: K8sOptions, prod: ProdDir) -> None:
    """Raise ConfigError for an option that would write unusable manifests."""
    sites = {s.name for s in prod.sites}
    for what, names in (
        ("--gpu", options.gpus),
        ("--server-address", options.site_server_addresses),
    ):
        unknown = set(names) - sites
        if unknown:
            raise ConfigError(f"{what} names unknown sites: {', '.join(sorted(unknown))}")
    for site, count in options.gpus.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ConfigError(f"--gpu {site}={count!r}: expected a whole number of GPUs")
    if not options.image or ":" in options.image.rsplit("/", 1)[-1] or "@" in options.image:
        raise ConfigError(
            f"--image {options.image!r}: give the repository without a tag or digest "
            "(use --tag, --digest)"
        )
    for what, digest in (("--digest", options.digest), ("--gpu-digest", options.gpu_digest)):
        if digest is not None and not _DIGEST.fullmatch(digest):
            raise ConfigError(f"{what} {digest!r}: expected sha256: and 64 hex digits")
    if options.data_claim is not None and not _DNS_SUBDOMAIN.fullmatch(options.data_claim):
        raise ConfigError(f"--data-claim {options.data_claim!r}: not a PVC name")
    if "/" in options.mnist_file or options.mnist_file in ("", ".", ".."):
        raise ConfigError(f"--mnist-file {options.mnist_file!r}: a file name inside the claim")
    if options.pull_policy not in (None, "Always", "IfNotPresent"):
        raise ConfigError(f"--pull-policy {options.pull_policy!r}: use Always or IfNotPresent")
    gpu_sites = [s.name for s in prod.sites if options.gpus.get(s.name, s.gpus)]
    mutable = (not options.digest) or (gpu_sites and not options.gpu_digest)
    if options.pull_policy == "IfNotPresent" and mutable:
        raise ConfigError(
            "--pull-policy IfNotPresent with an image by tag: a node keeps whatever the "
            "tag meant when it first pulled, so pods on different nodes can run different "
            "code. Pin the image with --digest (and --gpu-digest for GPU sites) or use Always"
        )
    _check_exposure("--service-type (site port)", options.fed)
    _check_exposure("--admin-service-type", options.admin)
    if options.server_address is not None:
        check_address(options.server_address, "--server-address")
    for site, address in options.site_server_addresses.items():
        check_address(address, f"--server-address {site}=")
    if options.secrets not in ("reference", "generate"):
        raise ConfigError(f"secrets {options.secrets!r}: use reference or generate")
    if options.bucket_for not in ("all", "sites"):
        raise ConfigError(f"--bucket-for {options.bucket_for!r}: use all or sites")
    if options.init not in ("pod", "tini", "none"):
        raise ConfigError(f"--init {options.init!r}: use pod, tini or none")
    if options.metrics_port is not None:
        taken = {prod.server.fed_learn_port, prod.server.admin_port, prod.server.health_port}
        if not 0 < options.metrics_port < 65536:
            raise ConfigError(f"--metrics-port {options.metrics_port}: not a port")
        if options.metrics_port in taken | {options.site_health_port}:
            raise ConfigError(
                f"--metrics-port {options.metrics_port}: already a daemon port "
                f"({', '.join(map(str, sorted(taken | {options.site_health_port})))})"
            )
    elif options.service_monitor:
        raise ConfigError("--service-monitor needs metrics (drop --no-metrics)")
    if options.bucket is not None and not re.fullmatch(
        r"[a-z0-9][a-z0-9._{}-]{1,220}[a-z0-9}]", options.bucket
    ):
        raise ConfigError(f"--bucket {options.bucket!r}: not a bucket name")
    for secret in options.image_pull_secrets:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", secret):
            raise ConfigError(f"--image-pull-secret {secret!r}: not a Secret name")
