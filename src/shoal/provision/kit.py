"""Reading a startup kit: :func:`load_kit` for the runtime, :func:`verify_kit` for checks.

    kit = load_kit(Path("prod_00/site-1"), expected_type="client")
    kit.config["server"]["fed_learn_port"]   # 8002
    kit.tls.cert_pem                         # for the mTLS channel

A kit is trusted only after its ``signature.json`` checks out, its
certificate is signed by its ``rootCA.pem`` and names the participant its
config describes, and its key belongs to that certificate.
"""

from __future__ import annotations

import json
import logging
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from shoal.errors import ConfigError, KitError
from shoal.provision.configs import CONFIG_FORMAT, config_file_name
from shoal.provision.pki import TLSMaterial, identity_from_cert, public_keys_match, verify_issued_by
from shoal.provision.project import ADMIN_ROLES, PARTICIPANT_TYPES
from shoal.provision.signing import verify_startup

__all__ = ["Kit", "load_kit", "verify_kit"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Kit:
    """A loaded, checked startup kit."""

    root: Path
    """The kit folder (holds ``startup/``, ``local/``); the default workspace."""
    startup: Path
    """``root/startup``: signed files."""
    local: Path
    """``root/local``: editable, unsigned files (log config, resources, CRL)."""
    project: str
    """Project name."""
    name: str
    """Participant name (the certificate's CN)."""
    type: str
    """``server``, ``client`` or ``admin``."""
    org: str
    """Organisation (the certificate's O)."""
    role: str | None
    """Admin role; ``None`` for servers and clients."""
    config: Mapping[str, Any]
    """The validated ``fed_server.json`` / ``fed_client.json`` / ``fed_admin.json``."""
    tls: TLSMaterial
    """CA certificate, own certificate and key, as PEM."""

    @property
    def crl_path(self) -> Path:
        """Where a server's or site's CRL lives (may not exist): the server
        refuses revoked peers with it, a site refuses jobs signed by a revoked
        admin."""
        return self.local / "crl.pem"


def _locate(root: Path) -> tuple[Path, str]:
    """The kit root and its participant type, from the config file present."""
    root = Path(root)
    # Accept the startup/ folder itself: people point at it by habit.
    if root.name == "startup" and not (root / "startup").is_dir():
        root = root.parent
    startup = root / "startup"
    if not startup.is_dir():
        raise KitError(f"{root}: not a startup kit (no startup/ folder)")
    found = [t for t in PARTICIPANT_TYPES if (startup / config_file_name(t)).is_file()]
    if len(found) != 1:
        names = ", ".join(config_file_name(t) for t in PARTICIPANT_TYPES)
        problem = "none" if not found else "more than one"
        raise KitError(f"{startup}: needs exactly one of {names}; found {problem}")
    return root, found[0]


def _cert_names(participant_type: str) -> tuple[str, str]:
    prefix = "server" if participant_type == "server" else "client"
    return f"{prefix}.crt", f"{prefix}.key"


def verify_kit(root: Path) -> None:
    """Check a kit's signature and certificate chain; ``KitError`` names what is wrong.

    A changed, missing or extra file in ``startup/`` names that file.
    """
    root, ptype = _locate(root)
    startup = root / "startup"
    verify_startup(startup)
    cert_name, _ = _cert_names(ptype)
    if not verify_issued_by(
        (startup / cert_name).read_bytes(), (startup / "rootCA.pem").read_bytes()
    ):
        raise KitError(f"{startup / cert_name}: not signed by the kit's rootCA.pem")


def load_kit(root: Path, *, expected_type: str | None = None, verify: bool = True) -> Kit:
    """Load the kit at ``root`` (its folder, or its ``startup/``).

    ``expected_type`` refuses a kit of another type (e.g. a client kit given
    to ``shoal server``). ``verify=False`` skips the signature check (tests,
    tools); the identity checks always run.
    """
    if expected_type is not None and expected_type not in PARTICIPANT_TYPES:
        raise ConfigError(f"expected_type: unknown participant type {expected_type!r}")
    root, ptype = _locate(root)
    startup = root / "startup"
    if expected_type is not None and ptype != expected_type:
        raise KitError(f"{root}: is a {ptype} kit, not a {expected_type} kit")
    if verify:
        verify_kit(root)

    config_path = startup / config_file_name(ptype)
    config = _read_config(config_path, ptype)
    cert_name, key_name = _cert_names(ptype)
    tls = TLSMaterial(
        ca_pem=_read(startup / "rootCA.pem"),
        cert_pem=_read(startup / cert_name),
        key_pem=_read(startup / key_name),
    )
    try:
        identity = identity_from_cert(tls.cert_pem)
    except ConfigError as exc:
        raise KitError(f"{startup / cert_name}: {exc}") from None
    expected = (config["name"], ptype, config["org"], config.get("role"))
    actual = (identity.name, identity.type, identity.org, identity.role)
    if actual != expected:
        raise KitError(
            f"{startup / cert_name}: certificate is for {actual[:2]!r} "
            f"but {config_path.name} describes {expected[:2]!r} (or org/role differ)"
        )
    if not public_keys_match(tls.cert_pem, tls.key_pem):
        raise KitError(f"{startup / key_name}: does not belong to {cert_name}")
    _warn_if_readable(startup / key_name)
    return Kit(
        root=root,
        startup=startup,
        local=root / "local",
        project=config["project"],
        name=config["name"],
        type=ptype,
        org=config["org"],
        role=config.get("role"),
        config=MappingProxyType(config),
        tls=tls,
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KitError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _warn_if_readable(key_path: Path) -> None:
    mode = key_path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning(
            "%s: private key is readable by others (mode %o); chmod 600 it",
            key_path,
            stat.S_IMODE(mode),
        )


def _read_config(path: Path, ptype: str) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KitError(f"{path}: unreadable: {exc}") from None
    if not isinstance(doc, dict):
        raise KitError(f"{path}: must be a JSON object")

    def need(
        mapping: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str = ""
    ) -> Any:
        value = mapping.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise KitError(f"{path}: {where}{key}: missing or not a {_kind_name(kind)}")
        return value

    if doc.get("format") != CONFIG_FORMAT:
        raise KitError(f"{path}: format: expected {CONFIG_FORMAT}, got {doc.get('format')!r}")
    for key in ("project", "name", "org"):
        need(doc, key, str)
    if doc.get("type") != ptype:
        raise KitError(f"{path}: type: expected {ptype!r}, got {doc.get('type')!r}")
    if ptype == "server":
        for key in ("fed_learn_port", "admin_port"):
            _check_port(path, key, need(doc, key, int))
        need(doc, "participants", list)
    else:
        server = need(doc, "server", dict)
        need(server, "name", str, "server.")
        need(server, "host", str, "server.")
        port_key = "fed_learn_port" if ptype == "client" else "admin_port"
        _check_port(path, f"server.{port_key}", need(server, port_key, int, "server."))
    if ptype == "admin":
        role = need(doc, "role", str)
        if role not in ADMIN_ROLES:
            raise KitError(f"{path}: role: unknown admin role {role!r}")
    elif doc.get("role") is not None:
        raise KitError(f"{path}: role: only admin kits have a role")
    return doc


def _check_port(path: Path, key: str, value: int) -> None:
    if not 1 <= value <= 65535:
        raise KitError(f"{path}: {key}: port {value} out of range 1-65535")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {"str": "string", "int": "integer", "dict": "object", "list": "list"}
    return " or ".join(names.get(k.__name__, k.__name__) for k in kinds)
