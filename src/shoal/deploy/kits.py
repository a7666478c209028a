"""Read a provisioned ``prod_NN`` folder into what a deployment needs to know.

Only the participant config files are read (``startup/fed_server.json``,
``startup/fed_client.json``, ``startup/fed_admin.json``; see
docs/architecture.md). Keys stay where they are; the manifest writer copies
each participant's ``startup/`` into that participant's overlay only.

    prod = read_prod_dir(Path("workspace/example_project/prod_00"))
    prod.server.service_host   # 'server1.shoal-infra.svc.cluster.local'
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.errors import ConfigError, KitError

__all__ = ["AdminKit", "ProdDir", "ServerKit", "SiteKit", "dns_label", "read_prod_dir"]

#: Namespace of the server when ``fed_server.json`` has no ``kubernetes`` key.
DEFAULT_SERVER_NAMESPACE = "shoal-infra"


def dns_label(name: str) -> str:
    """A participant name as a Kubernetes DNS label (same rule as provisioning).

    >>> dns_label("Site_1")
    'site-1'
    """
    label = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "p"
    if label[0].isdigit():
        label = "p-" + label
    return label[:63].rstrip("-")


@dataclass(frozen=True)
class ServerKit:
    """The server participant and how it is reached inside the cluster."""

    name: str
    """Participant name; also the TLS name clients check."""
    path: Path
    """The kit folder (holds ``startup/`` and ``local/``)."""
    fed_learn_port: int
    """Fleet service port that sites dial."""
    admin_port: int
    """Admin service port that admin consoles dial."""
    health_port: int
    """Plaintext grpc.health.v1 port used by the kubelet's probes."""
    namespace: str
    """Kubernetes namespace the server runs in."""
    service: str
    """Name of the Service in front of the server."""

    @property
    def service_host(self) -> str:
        """Cluster DNS name sites dial, e.g. ``server1.shoal-infra.svc.cluster.local``."""
        return f"{self.service}.{self.namespace}.svc.cluster.local"


@dataclass(frozen=True)
class SiteKit:
    """One client site."""

    name: str
    """Participant name (certificate CN)."""
    path: Path
    """The kit folder."""
    namespace: str
    """Kubernetes namespace the site runs in."""
    gpus: int
    """GPUs the site asks for, from ``local/resources.json`` (0 if it says nothing)."""
    gpu_type: str | None = None
    """Accelerator type from ``local/resources.json`` ``gpu_type`` (e.g. ``nvidia-l4``),
    the node label GKE gives GPU nodes (``cloud.google.com/gke-accelerator``)."""


@dataclass(frozen=True)
class AdminKit:
    """An admin user; never deployed, listed so docs and messages can name it."""

    name: str
    path: Path


@dataclass(frozen=True)
class ProdDir:
    """Everything in one ``prod_NN`` folder."""

    path: Path
    project: str
    server: ServerKit
    sites: tuple[SiteKit, ...]
    admins: tuple[AdminKit, ...]


def read_prod_dir(prod_dir: Path) -> ProdDir:
    """Find the server, sites and admins in ``prod_dir`` from their startup configs."""
    prod_dir = Path(prod_dir)
    if not prod_dir.is_dir():
        raise ConfigError(f"{prod_dir}: not a folder (expected WORKSPACE/<project>/prod_NN)")
    servers: list[ServerKit] = []
    sites: list[SiteKit] = []
    admins: list[AdminKit] = []
    projects: set[str] = set()
    for kit in sorted(p for p in prod_dir.iterdir() if p.is_dir()):
        startup = kit / "startup"
        if (startup / "fed_server.json").is_file():
            data = _load(startup / "fed_server.json")
            servers.append(_server(kit, data))
        elif (startup / "fed_client.json").is_file():
            data = _load(startup / "fed_client.json")
            sites.append(_site(kit, data))
        elif (startup / "fed_admin.json").is_file():
            data = _load(startup / "fed_admin.json")
            admins.append(AdminKit(name=_str(data, "name", startup / "fed_admin.json"), path=kit))
        else:
            continue
        if isinstance(data.get("project"), str):
            projects.add(data["project"])
    if len(servers) != 1:
        found = ", ".join(s.name for s in servers) or "none"
        raise ConfigError(f"{prod_dir}: expected exactly one server kit, found {found}")
    if not sites:
        raise ConfigError(f"{prod_dir}: no client site kits (startup/fed_client.json) found")
    if len(projects) > 1:
        raise ConfigError(f"{prod_dir}: kits from several projects: {sorted(projects)}")
    server = servers[0]
    namespaces: dict[str, str] = {server.namespace: server.name}
    for site in sites:
        other = namespaces.setdefault(site.namespace, site.name)
        if other != site.name:
            raise ConfigError(
                f"{prod_dir}: {site.name} and {other} share namespace {site.namespace!r}; "
                "each participant needs its own so each namespace holds only its own key"
            )
    return ProdDir(
        path=prod_dir,
        project=projects.pop() if projects else prod_dir.parent.name,
        server=server,
        sites=tuple(sites),
        admins=tuple(admins),
    )


def _load(path: Path) -> Mapping[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KitError(f"{path}: cannot read participant config: {exc}") from exc
    if not isinstance(data, dict):
        raise KitError(f"{path}: expected a JSON object")
    return data


def _str(data: Mapping[str, Any], key: str, source: Path) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise KitError(f"{source}: {key}: missing or not a string")
    return value


def _port(data: Mapping[str, Any], key: str, source: Path, default: int | None = None) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise KitError(f"{source}: {key}: expected a port number, got {value!r}")
    return value


def _k8s(data: Mapping[str, Any], source: Path) -> Mapping[str, Any]:
    section = data.get("kubernetes") or {}
    if not isinstance(section, dict):
        raise KitError(f"{source}: kubernetes: expected an object")
    return section


def _label(section: Mapping[str, Any], key: str, default: str, source: Path) -> str:
    value = section.get(key, default)
    if not isinstance(value, str) or dns_label(value) != value:
        raise KitError(f"{source}: kubernetes.{key}: {value!r} is not a DNS label")
    return value


def _server(kit: Path, data: Mapping[str, Any]) -> ServerKit:
    source = kit / "startup" / "fed_server.json"
    name = _str(data, "name", source)
    admin_port = _port(data, "admin_port", source)
    section = _k8s(data, source)
    return ServerKit(
        name=name,
        path=kit,
        fed_learn_port=_port(data, "fed_learn_port", source),
        admin_port=admin_port,
        health_port=_port(data, "health_port", source, admin_port + 1),
        namespace=_label(section, "namespace", DEFAULT_SERVER_NAMESPACE, source),
        service=_label(section, "service", dns_label(name), source),
    )


def _site(kit: Path, data: Mapping[str, Any]) -> SiteKit:
    source = kit / "startup" / "fed_client.json"
    name = _str(data, "name", source)
    section = _k8s(data, source)
    return SiteKit(
        name=name,
        path=kit,
        namespace=_label(section, "namespace", f"shoal-{dns_label(name)}", source),
        gpus=_gpus_from_resources(kit / "local" / "resources.json"),
        gpu_type=_gpu_type_from_resources(kit / "local" / "resources.json"),
    )


def _gpu_type_from_resources(path: Path) -> str | None:
    """``gpu_type`` at the top of ``local/resources.json`` or under ``resources``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    for section in (data, data.get("resources")):
        if isinstance(section, dict) and isinstance(section.get("gpu_type"), str):
            value: str = section["gpu_type"]
            if re.fullmatch(r"[a-z0-9][a-z0-9.-]{0,62}", value):
                return value
    return None


_GPU_KEYS = ("gpus", "num_gpus", "num_of_gpus", "gpu_count")


def _gpus_from_resources(path: Path) -> int:
    """GPUs a site declares in ``local/resources.json`` (0 when absent or unreadable).

    The file is the site's own, editable and unsigned; it may say ``"gpus": 1``
    at the top, under ``"resources"``, or NVFlare-style in a component's
    ``args`` (``"num_of_gpus": 1``). The largest number found wins.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0
    found = 0
    stack: list[Any] = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key in _GPU_KEYS and isinstance(value, int) and not isinstance(value, bool):
                    found = max(found, value)
                elif isinstance(value, (dict, list)):
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
    return found
