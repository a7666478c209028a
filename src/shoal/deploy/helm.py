"""Helm charts for a provisioned federation: the two charts and a values file each.

The charts (``shoal-server``, ``shoal-site``, shipped in this package) render
the same objects as the kustomize tree of :mod:`shoal.deploy.k8s` for the
same :class:`K8sOptions` (tests/deploy render both and compare). They never
make the kit's Secret: the pods mount ``shoal-startup``, made out of band
(``secrets.sh``), so no values file holds a key.

    OUT/shoal-server/  OUT/shoal-site/   the charts
    OUT/values/<participant>.yaml        one release each
    OUT/secrets.sh  OUT/gcp-iam.sh       commands to run once (no key material)

    write_helm(Path("workspace/p/prod_00"), Path("helm"), K8sOptions(tag="0.1.0"))
    # helm install server1 helm/shoal-server -n shoal-infra -f helm/values/server1.yaml
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import yaml

from shoal.deploy import objects as o
from shoal.deploy.gcp import iam_script
from shoal.deploy.k8s import secrets_script, site_server_address
from shoal.deploy.kits import ProdDir, ServerKit, SiteKit, dns_label, read_prod_dir
from shoal.deploy.options import Exposure, K8sOptions, check_options, storage_class
from shoal.errors import ConfigError

__all__ = ["CHARTS", "HelmRelease", "helm_releases", "write_helm"]

logger = logging.getLogger(__name__)

#: The charts shipped with shoal.
CHARTS = Path(__file__).with_name("charts")

#: Marks a folder as written by this module, so a rerun may replace it.
MARKER = ".shoal-helm"


class HelmRelease:
    """One ``helm install``: which chart, into which namespace, with which values."""

    def __init__(self, name: str, chart: str, namespace: str, values: dict[str, Any]) -> None:
        self.name = name
        self.chart = chart
        self.namespace = namespace
        self.values = values

    def command(self, out: Path) -> str:
        return (
            f"helm upgrade --install {self.name} {out / self.chart} -n {self.namespace} "
            f"--create-namespace -f {out / 'values' / (self.name + '.yaml')}"
        )


def helm_releases(prod: ProdDir, options: K8sOptions) -> list[HelmRelease]:
    """The server's release, then one per site."""
    check_options(options, prod)
    if options.secrets != "reference":
        raise ConfigError(
            "the Helm charts never hold keys: they mount the Secret shoal-startup, made "
            "out of band (secrets.sh); --secrets generate is for `shoal deploy k8s` only"
        )
    server = prod.server
    releases = [
        HelmRelease(
            dns_label(server.name), "shoal-server", server.namespace, _server(prod, options)
        )
    ]
    releases += [
        HelmRelease(dns_label(s.name), "shoal-site", s.namespace, _site(prod, s, options))
        for s in prod.sites
    ]
    return releases


def write_helm(prod_dir: Path, out_dir: Path, options: K8sOptions | None = None) -> list[Path]:
    """Write the charts, a values file per participant and the one-off scripts."""
    options = options or K8sOptions()
    prod = read_prod_dir(Path(prod_dir))
    releases = helm_releases(prod, options)
    out_dir = Path(out_dir)
    if out_dir.exists():
        if any(out_dir.iterdir()) and not (out_dir / MARKER).is_file():
            raise ConfigError(f"{out_dir}: not empty and not written by `shoal deploy helm`")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    for chart in ("shoal-server", "shoal-site"):
        shutil.copytree(CHARTS / chart, out_dir / chart)
    files = [p for p in out_dir.rglob("*") if p.is_file()]
    (out_dir / "values").mkdir()
    for release in releases:
        path = out_dir / "values" / f"{release.name}.yaml"
        header = f"# {release.chart} values for {release.name}, written by `shoal deploy helm`.\n"
        path.write_text(header + yaml.safe_dump(release.values, sort_keys=False), encoding="utf-8")
        files.append(path)
    extra = {"secrets.sh": secrets_script(prod)}
    if options.bucket:
        extra["gcp-iam.sh"] = iam_script(prod, options)
    if options.retain_provisioner:
        name = storage_class(options)
        assert name
        sc = o.storage_class(name, options.retain_provisioner)
        extra["storageclass.yaml"] = yaml.safe_dump(sc, sort_keys=False)
    for name, text in extra.items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        if name.endswith(".sh"):
            path.chmod(0o755)
        files.append(path)
    (out_dir / MARKER).write_text("written by `shoal deploy helm`; safe to delete\n")
    logger.info("wrote Helm charts and %d values files to %s", len(releases), out_dir)
    return files


def _image(options: K8sOptions, *, gpu: bool) -> dict[str, str]:
    if gpu:
        tag, digest = options.gpu_tag or f"{options.tag}-cuda", options.gpu_digest
    else:
        tag, digest = options.tag, options.digest
    return {
        "repository": options.image,
        "tag": tag,
        "digest": digest or "",
        "pullPolicy": options.pull_policy or "",
    }


def _local(kit: Path) -> dict[str, str]:
    local = kit / "local"
    if not local.is_dir():
        return {}
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(local.iterdir()) if p.is_file()}


def _bucket(options: K8sOptions, participant: str, enabled: bool) -> dict[str, str]:
    if not (options.bucket and enabled):
        return {"name": "", "onlyDir": ""}
    name = o.bucket_name(options, participant)
    return {"name": name, "onlyDir": dns_label(participant) if name == options.bucket else ""}


def _common(prod: ProdDir, kit: Path, options: K8sOptions, *, gpu: bool) -> dict[str, Any]:
    return {
        "project": dns_label(prod.project),
        "image": _image(options, gpu=gpu),
        "imagePullSecrets": list(options.image_pull_secrets),
        "init": options.init,
        "kit": {"secretName": "shoal-startup", "local": _local(kit)},
        # The same claim for the server and every site (K8sOptions.data_claim).
        "data": {"claim": options.data_claim or "", "mnistFile": options.mnist_file},
        "metrics": {
            "enabled": options.metrics_port is not None,
            "port": options.metrics_port or 9090,
            "serviceMonitor": {"enabled": options.service_monitor},
        },
    }


def _persistence(options: K8sOptions) -> dict[str, str]:
    return {"size": options.storage_size, "storageClass": storage_class(options) or ""}


def _exposure(name: str, e: Exposure) -> dict[str, Any]:
    return {
        "name": name,
        "type": e.type,
        "loadBalancerSourceRanges": list(e.source_ranges),
        "loadBalancerIP": e.ip or "",
        "internal": e.internal,
        "annotations": dict(e.annotations),
    }


def _server(prod: ProdDir, options: K8sOptions) -> dict[str, Any]:
    server: ServerKit = prod.server
    return {
        "participant": dns_label(server.name),
        **_common(prod, server.path, options, gpu=False),
        "ports": {
            "fed": server.fed_learn_port,
            "admin": server.admin_port,
            "health": server.health_port,
        },
        "service": _exposure(server.service, options.fed),
        "adminService": _exposure(o.admin_service_name(server), options.admin),
        "persistence": _persistence(options),
        "bucket": _bucket(options, server.name, options.bucket_for == "all"),
        "state": {"size": options.state_size},
        "pdb": {"enabled": options.pdb},
    }


def _site(prod: ProdDir, site: SiteKit, options: K8sOptions) -> dict[str, Any]:
    gpus = options.gpus.get(site.name, site.gpus)
    selector = dict(options.gpu_node_selector)
    if not selector and site.gpu_type:
        selector = {"cloud.google.com/gke-accelerator": site.gpu_type}
    return {
        "participant": dns_label(site.name),
        **_common(prod, site.path, options, gpu=bool(gpus)),
        "serverAddress": site_server_address(prod, site, options),
        "healthPort": options.site_health_port,
        "gpu": {
            "count": gpus,
            "nodeSelector": selector if gpus else {},
            "libraryPath": o.GPU_LIBRARY_PATH,
        },
        "persistence": _persistence(options),
        "bucket": _bucket(options, site.name, True),
        "pdb": {"enabled": options.pdb},
    }
