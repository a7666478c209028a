"""``shoal provision --revoke NAME``: put a participant's certificates on the CRL.

The CRL is signed by the project CA, kept in ``state/crl.pem`` and copied to
``local/crl.pem`` of every server and site kit of the project. ``local/`` is
not part of the signed kit, so revocation works without re-issuing anything;
the server reads it with :func:`shoal.provision.load_revoked_serials` to
refuse revoked peers, a site to refuse jobs signed by a revoked admin (it also
takes the CRL the server sends with each job; see docs/security.md "Signed
jobs"). Kits already handed out need the new file copied to them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography import x509

from shoal.errors import ConfigError, KitError, NotFoundError, ProvisionError
from shoal.provision.names import name_problem
from shoal.provision.pki import identity_from_cert, load_crl
from shoal.provision.project import load_project
from shoal.provision.state import (
    CRL_FILE,
    STATE_DIR,
    atomic_write,
    iter_kits,
    load_ca,
    read_ledger,
)

__all__ = ["revoke"]

logger = logging.getLogger(__name__)


def revoke(project_file: Path, workspace: Path, name: str) -> Path:
    """Revoke every certificate issued to ``name``; return the CRL's path.

    Serials come from ``state/issued.json`` and from the certificates of
    existing kits named ``name``. Raises ``NotFoundError`` when the project
    was never provisioned in ``workspace`` or ``name`` never got a certificate.
    """
    if (problem := name_problem(name)) is not None:
        raise ConfigError(f"revoke: participant name {name!r} {problem}")
    project = load_project(Path(project_file))
    project_dir = Path(workspace) / project.name
    state = project_dir / STATE_DIR
    if not state.is_dir():
        raise NotFoundError(
            f"{state}: project {project.name} has not been provisioned in {workspace}"
        )
    ca = load_ca(state)

    serials = {record.serial for record in read_ledger(state) if record.name == name}
    serials |= _serials_in_kits(project_dir, name)
    if not serials:
        raise NotFoundError(
            f"revoke: no certificate was issued to {name!r} in project {project.name}"
        )

    crl_path = state / CRL_FILE
    previous: x509.CertificateRevocationList | None = None
    if crl_path.exists():
        try:
            previous = load_crl(crl_path.read_bytes(), ca.cert_pem, source=crl_path)
        except KitError as exc:
            raise ProvisionError(str(exc)) from None
    crl_pem = ca.build_crl(sorted(serials), previous=previous)
    try:
        atomic_write(crl_path, crl_pem)
        copies = 0
        for kit in iter_kits(project_dir):
            startup = kit / "startup"
            if (startup / "fed_server.json").is_file() or (startup / "fed_client.json").is_file():
                local = kit / "local"
                local.mkdir(exist_ok=True)
                atomic_write(local / CRL_FILE, crl_pem)
                copies += 1
    except OSError as exc:
        raise ProvisionError(
            f"{exc.filename or crl_path}: cannot write CRL: {exc.strerror}"
        ) from None
    logger.info(
        "revoked %d certificate(s) of %s in project %s; CRL copied to %d server/site kit(s)",
        len(serials),
        name,
        project.name,
        copies,
    )
    return crl_path


def _serials_in_kits(project_dir: Path, name: str) -> set[int]:
    serials: set[int] = set()
    for kit in iter_kits(project_dir):
        if kit.name != name:
            continue
        for cert_name in ("server.crt", "client.crt"):
            path = kit / "startup" / cert_name
            if path.is_file():
                try:
                    serials.add(identity_from_cert(path.read_bytes()).serial)
                except ConfigError:
                    logger.warning("%s: not a certificate; skipped", path)
    return serials
