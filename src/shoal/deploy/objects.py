"""Kubernetes objects for shoal participants, as plain dicts.

The kustomize tree (:mod:`shoal.deploy.k8s`) is written from these, and the
Helm charts' tests render both and compare, so the two stay one design.
Nothing here reads files or knows about overlays.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shoal.deploy.kits import ServerKit, dns_label
from shoal.deploy.options import Exposure, K8sOptions, pull_policy
from shoal.transport.health import FLEET_SERVICE, SITE_SERVICE

__all__ = [
    "GPU_LIBRARY_PATH",
    "IMAGE_PLACEHOLDER",
    "GPU_IMAGE_PLACEHOLDER",
    "RUN_AS",
    "STATE_DIR",
    "WORKSPACE",
    "admin_service_name",
    "bucket_name",
    "client_deployment",
    "labels",
    "namespace",
    "network_policy",
    "pdb",
    "pvc",
    "server_deployment",
    "metrics_service",
    "server_services",
    "service_account",
    "service_monitor",
    "storage_class",
]

#: Placeholder image names in the bases; overlays map them with kustomize ``images:``.
IMAGE_PLACEHOLDER = "shoal"
GPU_IMAGE_PLACEHOLDER = "shoal-cuda"

#: UID/GID of the image's ``shoal`` user (deploy/Dockerfile).
RUN_AS = 10001

#: Where the pod finds things (deploy/entrypoint.sh reads the first three).
KIT_SOURCE = "/etc/shoal/kit"
KIT_DIR = "/run/shoal/kit"
WORKSPACE = "/workspace"
#: The server's database, job CA, lock and log when its workspace is a bucket.
STATE_DIR = "/var/lib/shoal"
#: The image's HOME (deploy/Dockerfile); an emptyDir, the root filesystem being read-only.
HOME = "/home/shoal"
#: Where ``K8sOptions.data_claim`` is mounted (read-only) in every pod.
DATA_DIR = "/data"
#: The entrypoint, for when the manifests set the command (``init: tini``).
ENTRYPOINT = "/usr/local/bin/shoal-entrypoint"

#: Where GKE's NVIDIA driver installer puts the driver's libraries (libcuda.so)
#: inside GPU containers; CUDA images built elsewhere look in the system paths.
GPU_LIBRARY_PATH = "/usr/local/nvidia/lib64:/usr/local/nvidia/lib"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_PART_OF = "app.kubernetes.io/part-of"

#: What a Prometheus configured "by annotation" looks for on a pod.
SCRAPE_ANNOTATIONS = ("prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path")

#: GKE: an internal (VPC-only) passthrough load balancer.
GKE_INTERNAL_LB = "networking.gke.io/load-balancer-type"


def labels(component: str, instance: str | None = None) -> dict[str, str]:
    out = {LABEL_NAME: "shoal", LABEL_COMPONENT: component}
    if instance:
        out[LABEL_INSTANCE] = instance
    return out


def meta(name: str, lbls: Mapping[str, str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "labels": dict(lbls), **extra}


def namespace(name: str, component: str, instance: str) -> dict[str, Any]:
    lbls = labels(component, instance)
    # Pod Security Admission: the pods meet "restricted", so enforce it.
    lbls["pod-security.kubernetes.io/enforce"] = "restricted"
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta(name, lbls)}


def service_account(component: str) -> dict[str, Any]:
    # shoal never talks to the Kubernetes API; no token in the pod.
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta("shoal", labels(component)),
        "automountServiceAccountToken": False,
    }


def pvc(name: str, component: str, size: str, storage_class: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": size}},
    }
    if storage_class:
        spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": meta(name, labels(component)),
        "spec": spec,
    }


def storage_class(name: str, provisioner: str) -> dict[str, Any]:
    """A StorageClass whose volumes outlive their claims (and namespaces)."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": meta(name, {LABEL_NAME: "shoal"}),
        "provisioner": provisioner,
        "reclaimPolicy": "Retain",
        "allowVolumeExpansion": True,
        # Bound where the pod lands, so a zonal disk is in the pod's zone.
        "volumeBindingMode": "WaitForFirstConsumer",
    }


def _probe(port: int, *, period: int, failures: int, service: str = "") -> dict[str, Any]:
    check: dict[str, Any] = {"port": port}
    if service:
        check["service"] = service
    return {
        "grpc": check,
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def metrics_args(options: K8sOptions) -> list[str]:
    """The daemon's metrics flags: on every interface of the pod, or none."""
    if options.metrics_port is None:
        return []
    return ["--metrics-port", str(options.metrics_port), "--metrics-host", "0.0.0.0"]


def _metrics_ports(options: K8sOptions) -> list[tuple[str, int]]:
    return [] if options.metrics_port is None else [("metrics", options.metrics_port)]


def _container(
    options: K8sOptions,
    *,
    args: list[str],
    ports: list[tuple[str, int]],
    health_port: int,
    ready_service: str,
    resources: dict[str, Any],
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "shoal",
        "image": IMAGE_PLACEHOLDER,
        # A tag can move: Always, unless the image is pinned by digest.
        "imagePullPolicy": pull_policy(options),
    }
    if options.init == "tini":
        container["command"] = ["tini", "--", ENTRYPOINT]
    container.update(
        {
            "args": args,
            "env": [
                {"name": "SHOAL_KIT_SOURCE", "value": KIT_SOURCE},
                {"name": "SHOAL_KIT_DIR", "value": KIT_DIR},
                {"name": "SHOAL_WORKSPACE_DIR", "value": WORKSPACE},
                {"name": "HOME", "value": HOME},
                {"name": "KERAS_HOME", "value": f"{WORKSPACE}/.keras"},
            ],
            "ports": [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in ports],
            # A slow start (first volume mount, TLS setup) must not count as a hang.
            "startupProbe": _probe(health_port, period=5, failures=60),
            # Ready asks for the role's own service: a site serves it only while
            # connected to its server, the server stops serving it when draining.
            # Alive asks for "" (the process answers): a cut-off site is not restarted.
            "readinessProbe": _probe(health_port, period=10, failures=3, service=ready_service),
            "livenessProbe": _probe(health_port, period=20, failures=3),
            "resources": resources,
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "runAsNonRoot": True,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": [
                {"name": "startup", "mountPath": f"{KIT_SOURCE}/startup", "readOnly": True},
                {"name": "local", "mountPath": f"{KIT_SOURCE}/local", "readOnly": True},
                {"name": "kit", "mountPath": "/run/shoal"},
                {"name": "workspace", "mountPath": WORKSPACE},
                {"name": "tmp", "mountPath": "/tmp"},
                {"name": "home", "mountPath": HOME},
            ],
        }
    )
    if options.data_claim:
        # The same switch for the server and the sites: whoever runs job code
        # that needs the data gets it.
        container["env"] += [
            {"name": "SHOAL_DATA_PATHS", "value": DATA_DIR},
            {"name": "SHOAL_MNIST_PATH", "value": f"{DATA_DIR}/{options.mnist_file}"},
        ]
        container["volumeMounts"].append({"name": "data", "mountPath": DATA_DIR, "readOnly": True})
    return container


def _deployment(
    name: str,
    component: str,
    container: dict[str, Any],
    options: K8sOptions,
    *,
    grace_s: int,
) -> dict[str, Any]:
    lbls = labels(component)
    template_meta: dict[str, Any] = {"labels": dict(lbls)}
    if options.metrics_port is not None:
        # Prometheus' usual pod discovery keys on these.
        template_meta["annotations"] = dict(
            zip(SCRAPE_ANNOTATIONS, ("true", str(options.metrics_port), "/metrics"), strict=True)
        )
    pod: dict[str, Any] = {
        "serviceAccountName": "shoal",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
    }
    if options.init == "pod":
        # The pod's pause process is PID 1 and reaps what job code orphans;
        # the daemon still gets the kubelet's SIGTERM.
        pod["shareProcessNamespace"] = True
    if options.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in options.image_pull_secrets]
    pod.update(
        {
            "terminationGracePeriodSeconds": grace_s,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": RUN_AS,
                "runAsGroup": RUN_AS,
                "fsGroup": RUN_AS,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            "volumes": [
                # 0440 + fsGroup: readable by the shoal user only; the
                # entrypoint copies it to a 0600 in-memory kit.
                {
                    "name": "startup",
                    "secret": {"secretName": "shoal-startup", "defaultMode": 0o440},
                },
                {"name": "local", "configMap": {"name": "shoal-local", "optional": True}},
                {"name": "kit", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
                {"name": "workspace", "persistentVolumeClaim": {"claimName": "shoal-workspace"}},
                {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}},
                # HOME must be writable (caches, config) on a read-only root filesystem.
                {"name": "home", "emptyDir": {"sizeLimit": "1Gi"}},
            ],
        }
    )
    if options.data_claim:
        pod["volumes"].append(
            {
                "name": "data",
                "persistentVolumeClaim": {"claimName": options.data_claim, "readOnly": True},
            }
        )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(name, lbls),
        "spec": {
            # One daemon per kit: two pods with the same identity (or two
            # writers of one job store) must never overlap, even in a rollout.
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": dict(lbls)},
            "template": {"metadata": template_meta, "spec": pod},
        },
    }


def server_deployment(server: ServerKit, options: K8sOptions) -> dict[str, Any]:
    container = _container(
        options,
        args=["server", *metrics_args(options)],
        ports=[
            ("fed", server.fed_learn_port),
            ("admin", server.admin_port),
            ("health", server.health_port),
            *_metrics_ports(options),
        ],
        health_port=server.health_port,
        ready_service=FLEET_SERVICE,
        resources={"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
    )
    # The server checkpoints running jobs on SIGTERM; give it time to.
    return _deployment(dns_label(server.name), "server", container, options, grace_s=60)


def client_deployment(options: K8sOptions) -> dict[str, Any]:
    port = options.site_health_port
    container = _container(
        options,
        args=["client", "--health-port", str(port), *metrics_args(options)],
        ports=[("health", port), *_metrics_ports(options)],
        health_port=port,
        ready_service=SITE_SERVICE,
        resources={"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}},
    )
    return _deployment("shoal-client", "client", container, options, grace_s=30)


def admin_service_name(server: ServerKit) -> str:
    return f"{server.service[:57].rstrip('-')}-admin"


def _service(name: str, port_name: str, port: int, exposure: Exposure) -> dict[str, Any]:
    annotations = dict(exposure.annotations)
    if exposure.internal:
        annotations[GKE_INTERNAL_LB] = "Internal"
    metadata = meta(name, labels("server"))
    if annotations:
        metadata["annotations"] = annotations
    spec: dict[str, Any] = {
        "type": exposure.type,
        "selector": labels("server"),
        "ports": [{"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}],
    }
    if exposure.source_ranges:
        spec["loadBalancerSourceRanges"] = list(exposure.source_ranges)
    if exposure.ip:
        spec["loadBalancerIP"] = exposure.ip
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec}


def server_services(server: ServerKit, options: K8sOptions) -> list[dict[str, Any]]:
    """The site port's Service (named as sites dial it) and the admin port's, apart:
    each its own type, source ranges and address, so the admin port is never
    exposed because the site port is."""
    return [
        _service(server.service, "fed", server.fed_learn_port, options.fed),
        _service(admin_service_name(server), "admin", server.admin_port, options.admin),
    ]


def network_policy(component: str, ports: list[int]) -> dict[str, Any]:
    ingress: list[dict[str, Any]] = []
    if ports:
        ingress.append({"ports": [{"protocol": "TCP", "port": p} for p in ports]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta("shoal-ingress", labels(component)),
        "spec": {
            "podSelector": {"matchLabels": labels(component)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def metrics_service(component: str, port: int) -> dict[str, Any]:
    """A ClusterIP Service in front of the pod's metrics port, for a ServiceMonitor."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta("shoal-metrics", labels(component)),
        "spec": {
            "type": "ClusterIP",
            "selector": labels(component),
            "ports": [
                {"name": "metrics", "port": port, "targetPort": "metrics", "protocol": "TCP"}
            ],
        },
    }


def service_monitor(component: str) -> dict[str, Any]:
    """A Prometheus Operator ServiceMonitor scraping :func:`metrics_service`."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": meta("shoal", labels(component)),
        "spec": {
            "selector": {"matchLabels": labels(component)},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s"}],
        },
    }


def pdb(component: str) -> dict[str, Any]:
    """Voluntary evictions (drains, autoscaler scale-down) wait for an operator
    rather than cut a round; a pod that is not healthy may always go."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta("shoal", labels(component)),
        "spec": {
            "minAvailable": 1,
            "selector": {"matchLabels": labels(component)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def bucket_name(options: K8sOptions, participant: str) -> str:
    """The bucket behind ``participant``'s workspace."""
    assert options.bucket
    return options.bucket.replace("{participant}", dns_label(participant))
