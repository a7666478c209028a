"""``project.yml``: read, validate, and turn into frozen dataclasses.

The file format is NVIDIA FLARE's (``api_version``, ``name``,
``participants``, ``builders``) plus two optional shoal keys: ``host_names``
on the server participant and a top-level ``kubernetes:`` section. Every
problem is a :class:`~shoal.errors.ConfigError` reading
``<file>: <field>: <problem>``.

    project = load_project(Path("project.yml"))
    project.server.fed_learn_port   # 8002
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shoal._yaml import BoundedAliasLoader
from shoal.errors import ConfigError
from shoal.provision.names import (
    dns_label,
    is_dns_label,
    is_hostname,
    is_ip_address,
    name_problem,
)
from shoal.provision.nvflare import BuilderNote, map_builders

__all__ = [
    "ADMIN_ROLES",
    "PARTICIPANT_TYPES",
    "KubernetesSettings",
    "Participant",
    "Project",
    "load_project",
]

logger = logging.getLogger(__name__)

PARTICIPANT_TYPES: tuple[str, ...] = ("server", "client", "admin")
ADMIN_ROLES: tuple[str, ...] = ("project_admin", "org_admin", "lead", "member")
SUPPORTED_API_VERSIONS: tuple[int, ...] = (2, 3)

DEFAULT_FED_LEARN_PORT = 8002
DEFAULT_ADMIN_PORT = 8003

_PARTICIPANT_KEYS = {
    "name",
    "type",
    "org",
    "role",
    "fed_learn_port",
    "admin_port",
    "health_port",
    "host_names",
}


@dataclass(frozen=True)
class Participant:
    """One entry of ``participants:``."""

    name: str
    """Kit folder name and certificate CN; for the server also its TLS name."""
    type: str
    """``server``, ``client`` or ``admin``."""
    org: str
    """Organisation, the certificate's O."""
    role: str | None = None
    """Admins only: ``project_admin``, ``org_admin``, ``lead`` or ``member``."""
    fed_learn_port: int | None = None
    """Server only: port of the Fleet service that sites dial."""
    admin_port: int | None = None
    """Server only: port of the Admin service that admin consoles dial."""
    health_port: int | None = None
    """Server only: plain gRPC health port (default ``admin_port + 1``)."""
    host_names: tuple[str, ...] = ()
    """Server only: extra DNS names or IPs put in the certificate's SANs."""


@dataclass(frozen=True)
class KubernetesSettings:
    """The optional ``kubernetes:`` section: which namespace each participant uses."""

    server_namespace: str = "shoal-infra"
    """Namespace of the server's Deployment and Service."""
    site_namespace: str = "shoal-{name}"
    """Template for each site's namespace; ``{name}`` is the site name as a DNS label."""

    def namespace_for(self, participant: Participant) -> str:
        """The namespace ``participant`` runs in.

        >>> KubernetesSettings().namespace_for(Participant("site-1", "client", "o"))
        'shoal-site-1'
        """
        if participant.type == "server":
            return self.server_namespace
        return self.site_namespace.replace("{name}", dns_label(participant.name))


@dataclass(frozen=True)
class Project:
    """A validated project file."""

    name: str
    """Project name: the folder under the workspace and the CA's name."""
    participants: tuple[Participant, ...]
    """Every participant, in file order (exactly one server)."""
    source: Path
    """The file it was read from."""
    description: str = ""
    """Free text from the file."""
    api_version: int = 3
    """NVFlare's ``api_version`` (2 and 3 are accepted)."""
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)
    """Namespaces for ``shoal deploy k8s`` and the participant configs."""
    builders: tuple[BuilderNote, ...] = ()
    """What became of each NVFlare ``builders:`` entry."""
    notes: tuple[str, ...] = ()
    """Other parts of the file that were accepted but have no effect."""

    @property
    def server(self) -> Participant:
        """The one server participant."""
        return next(p for p in self.participants if p.type == "server")

    @property
    def clients(self) -> tuple[Participant, ...]:
        """The client sites, in file order."""
        return tuple(p for p in self.participants if p.type == "client")

    @property
    def admins(self) -> tuple[Participant, ...]:
        """The admin users, in file order."""
        return tuple(p for p in self.participants if p.type == "admin")

    def participant(self, name: str) -> Participant | None:
        """The participant called ``name``, if any."""
        return next((p for p in self.participants if p.name == name), None)


class _Reader:
    """Builds ``ConfigError``s that name the file and the field."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.notes: list[str] = []

    def error(self, fieldname: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {fieldname}: {problem}")

    def string(self, data: Mapping[str, Any], key: str, where: str, *, required: bool) -> str:
        value = data.get(key)
        if value is None:
            if required:
                raise self.error(f"{where}{key}", "missing")
            return ""
        if not isinstance(value, str):
            raise self.error(f"{where}{key}", f"must be a string, got {type(value).__name__}")
        return value

    def port(self, data: Mapping[str, Any], key: str, where: str, default: int | None) -> int:
        value = data.get(key, default)
        if value is None:
            raise self.error(f"{where}{key}", "missing")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"{where}{key}", f"must be an integer port, got {value!r}")
        if not 1 <= value <= 65535:
            raise self.error(f"{where}{key}", f"port {value} out of range 1-65535")
        return value


def load_project(path: Path) -> Project:
    """Read and validate a project file; raise ``ConfigError`` on any problem."""
    path = Path(path)
    reader = _Reader(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise reader.error(
            "file", f"cannot read: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    try:
        # Aliases are bounded: unchecked, they let a small file expand without bound.
        data = yaml.load(text, Loader=BoundedAliasLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise reader.error("yaml", _yaml_problem(exc)) from None
    if not isinstance(data, Mapping):
        raise reader.error("(top level)", "must be a mapping with name and participants")
    return _parse_project(reader, data)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        return f"malformed YAML: {problem} (line {mark.line + 1}, column {mark.column + 1})"
    return f"malformed YAML: {problem}"


def _parse_project(reader: _Reader, data: Mapping[str, Any]) -> Project:
    api_version = data.get("api_version", 3)
    if isinstance(api_version, bool) or api_version not in SUPPORTED_API_VERSIONS:
        raise reader.error(
            "api_version",
            f"unsupported {api_version!r} (expected one of {', '.join(map(str, SUPPORTED_API_VERSIONS))})",
        )
    name = reader.string(data, "name", "", required=True)
    if (problem := name_problem(name)) is not None:
        raise reader.error("name", f"{name!r} {problem}")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise reader.error("description", "must be a string")

    raw_participants = data.get("participants")
    if not isinstance(raw_participants, list) or not raw_participants:
        raise reader.error("participants", "must be a non-empty list")
    participants: list[Participant] = []
    for index, raw in enumerate(raw_participants):
        parsed = _parse_participant(reader, index, raw)
        if parsed is not None:
            participants.append(parsed)
    _check_participants(reader, participants)

    raw_builders = data.get("builders") or []
    if not isinstance(raw_builders, list):
        raise reader.error("builders", "must be a list")
    kubernetes = _parse_kubernetes(reader, data.get("kubernetes"))
    project = Project(
        name=name,
        participants=tuple(participants),
        source=reader.source,
        description=description,
        api_version=int(api_version),
        kubernetes=kubernetes,
        builders=map_builders(raw_builders),
        notes=tuple(reader.notes),
    )
    _check_namespaces(reader, project)
    return project


def _parse_participant(reader: _Reader, index: int, raw: Any) -> Participant | None:
    where = f"participants[{index}]."
    if not isinstance(raw, Mapping):
        raise reader.error(f"participants[{index}]", "must be a mapping")
    name = reader.string(raw, "name", where, required=True)
    if (problem := name_problem(name)) is not None:
        raise reader.error(f"{where}name", f"{name!r} {problem}")
    ptype = reader.string(raw, "type", where, required=True)
    if ptype == "overseer":
        # FLARE's HA overseer: shoal's server restarts itself from the workspace.
        reader.notes.append(f"participant {name} (type overseer): ignored, shoal has no overseer")
        return None
    if ptype not in PARTICIPANT_TYPES:
        raise reader.error(
            f"{where}type", f"unknown type {ptype!r} (expected {', '.join(PARTICIPANT_TYPES)})"
        )
    org = reader.string(raw, "org", where, required=True)
    if (problem := name_problem(org)) is not None:
        raise reader.error(f"{where}org", f"{org!r} {problem}")
    for key in sorted(set(map(str, raw)) - _PARTICIPANT_KEYS):
        reader.notes.append(f"participant {name}: key {key!r} ignored")

    if ptype == "admin":
        role = reader.string(raw, "role", where, required=True)
        if role not in ADMIN_ROLES:
            raise reader.error(
                f"{where}role", f"unknown admin role {role!r} (expected {', '.join(ADMIN_ROLES)})"
            )
        return Participant(name=name, type=ptype, org=org, role=role)
    if "role" in raw:
        reader.notes.append(f"participant {name}: role ignored (only admins have roles)")
    if ptype == "client":
        return Participant(name=name, type=ptype, org=org)
    return _parse_server(reader, where, raw, name, org)


def _parse_server(
    reader: _Reader, where: str, raw: Mapping[str, Any], name: str, org: str
) -> Participant:
    if not (is_hostname(name) or is_ip_address(name)):
        raise reader.error(
            f"{where}name",
            f"server name {name!r} must be a DNS host name (letters, digits, '-', '.'): "
            "it is the TLS name clients check",
        )
    fed = reader.port(raw, "fed_learn_port", where, DEFAULT_FED_LEARN_PORT)
    admin = reader.port(raw, "admin_port", where, DEFAULT_ADMIN_PORT)
    if fed == admin:
        raise reader.error(f"{where}admin_port", f"equals fed_learn_port ({fed})")
    default_health = admin + 1 if admin < 65535 else None
    health = reader.port(raw, "health_port", where, default_health)
    if health in (fed, admin):
        raise reader.error(
            f"{where}health_port",
            f"{health} collides with fed_learn_port/admin_port (set health_port explicitly)",
        )
    raw_hosts = raw.get("host_names") or []
    if isinstance(raw_hosts, str) or not isinstance(raw_hosts, list):
        raise reader.error(f"{where}host_names", "must be a list of host names or IPs")
    hosts: list[str] = []
    for i, host in enumerate(raw_hosts):
        if not isinstance(host, str) or not (is_hostname(host) or is_ip_address(host)):
            raise reader.error(f"{where}host_names[{i}]", f"{host!r} is not a host name or IP")
        if host not in hosts:
            hosts.append(host)
    return Participant(
        name=name,
        type="server",
        org=org,
        fed_learn_port=fed,
        admin_port=admin,
        health_port=health,
        host_names=tuple(hosts),
    )


def _check_participants(reader: _Reader, participants: list[Participant]) -> None:
    servers = [p for p in participants if p.type == "server"]
    if not servers:
        raise reader.error("participants", "no participant of type server")
    if len(servers) > 1:
        names = ", ".join(p.name for p in servers)
        raise reader.error("participants", f"more than one server ({names}); exactly one allowed")
    seen: dict[str, str] = {}
    for index, p in enumerate(participants):
        # Case-insensitive: kit folders must not collide on macOS/Windows file systems.
        key = p.name.lower()
        if key in seen:
            raise reader.error(
                f"participants[{index}].name", f"duplicate name {p.name!r} (also {seen[key]!r})"
            )
        seen[key] = p.name


def _parse_kubernetes(reader: _Reader, raw: Any) -> KubernetesSettings:
    if raw is None:
        return KubernetesSettings()
    if not isinstance(raw, Mapping):
        raise reader.error("kubernetes", "must be a mapping")
    defaults = KubernetesSettings()
    server_ns = reader.string(raw, "server_namespace", "kubernetes.", required=False)
    site_ns = reader.string(raw, "site_namespace", "kubernetes.", required=False)
    for key in sorted(set(map(str, raw)) - {"server_namespace", "site_namespace"}):
        reader.notes.append(f"kubernetes: key {key!r} ignored")
    settings = KubernetesSettings(
        server_namespace=server_ns or defaults.server_namespace,
        site_namespace=site_ns or defaults.site_namespace,
    )
    if not is_dns_label(settings.server_namespace):
        raise reader.error(
            "kubernetes.server_namespace",
            f"{settings.server_namespace!r} is not a DNS label (a-z, 0-9, '-', at most 63)",
        )
    return settings


def _check_namespaces(reader: _Reader, project: Project) -> None:
    # One namespace per participant, so each namespace's Secret holds only its own
    # key (`shoal deploy k8s` refuses shared namespaces for the same reason).
    seen: dict[str, str] = {}
    for p in project.participants:
        if p.type != "client":
            continue
        ns = project.kubernetes.namespace_for(p)
        if not is_dns_label(ns):
            raise reader.error(
                "kubernetes.site_namespace",
                f"gives {ns!r} for {p.name}, not a DNS label (a-z, 0-9, '-', at most 63)",
            )
        if ns in seen or ns == project.kubernetes.server_namespace:
            other = seen.get(ns, project.server.name)
            raise reader.error(
                "kubernetes.site_namespace", f"{p.name} and {other} share namespace {ns!r}"
            )
        seen[ns] = p.name
