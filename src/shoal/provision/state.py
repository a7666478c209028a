"""``WORKSPACE/<project>/state/``: what provisioning keeps and never ships.

    state/
      rootCA.pem  rootCA.key (0600)   the project CA, reused by every run
      project.yml                     the project file of the latest run
      issued.json                     every certificate issued (for revocation)
      crl.pem                         revoked serials, signed by the CA

Also the small file-writing helpers every provisioning step shares: files
are created with their final mode and replaced atomically.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from shoal.errors import ProvisionError
from shoal.provision.pki import CertificateAuthority

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CRL_FILE",
    "LEDGER_FILE",
    "STATE_DIR",
    "IssuedRecord",
    "atomic_write",
    "iter_kits",
    "load_ca",
    "prod_dirs",
    "read_ledger",
    "save_ca",
    "write_file",
    "write_ledger",
]

STATE_DIR = "state"
CA_CERT_FILE = "rootCA.pem"
CA_KEY_FILE = "rootCA.key"
CRL_FILE = "crl.pem"
LEDGER_FILE = "issued.json"
PROJECT_COPY = "project.yml"

_PROD = re.compile(r"^prod_(\d+)$")


@dataclass(frozen=True)
class IssuedRecord:
    """One certificate issued by a provision run (a line of ``issued.json``)."""

    serial: int
    """Certificate serial number."""
    name: str
    """Participant name (CN)."""
    type: str
    """Participant type (OU)."""
    prod: str
    """The ``prod_NN`` folder the certificate went to."""
    not_after: str
    """End of validity, ISO 8601 UTC."""


def write_file(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Create ``path`` (which must not exist) with exactly ``mode``."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow a key's mode
        os.write(fd, raw)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        tmp_path.unlink()
        write_file(tmp_path, data, mode)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def save_ca(state: Path, ca: CertificateAuthority) -> None:
    """Write a new CA into an (empty) state folder."""
    write_file(state / CA_CERT_FILE, ca.cert_pem, 0o644)
    write_file(state / CA_KEY_FILE, ca.key_pem, 0o600)


def load_ca(state: Path) -> CertificateAuthority:
    """The project CA stored in ``state``; ``ProvisionError`` if missing or broken."""
    try:
        cert_pem = (state / CA_CERT_FILE).read_bytes()
        key_pem = (state / CA_KEY_FILE).read_bytes()
    except OSError as exc:
        raise ProvisionError(
            f"{exc.filename}: cannot read the project CA ({exc.strerror}); "
            "kits issued before cannot be trusted by a new CA, so restore it"
        ) from None
    return CertificateAuthority.load(cert_pem, key_pem)


def prod_dirs(project_dir: Path) -> list[Path]:
    """The ``prod_NN`` folders of a project, oldest first."""
    if not project_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in project_dir.iterdir() if (m := _PROD.match(p.name))]
    return [p for _, p in sorted(found) if p.is_dir()]


def next_prod_name(project_dir: Path) -> str:
    """``prod_00`` for the first run, then one more than the highest existing."""
    numbers = [int(m.group(1)) for p in prod_dirs(project_dir) if (m := _PROD.match(p.name))]
    return f"prod_{(max(numbers) + 1) if numbers else 0:02d}"


def iter_kits(project_dir: Path) -> Iterator[Path]:
    """Every kit folder (one holding ``startup/``) of every ``prod_NN``."""
    for prod in prod_dirs(project_dir):
        for kit in sorted(prod.iterdir()):
            if (kit / "startup").is_dir():
                yield kit


def read_ledger(state: Path) -> list[IssuedRecord]:
    """Every certificate recorded in ``issued.json`` (empty if none)."""
    path = state / LEDGER_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"{path}: unreadable: {exc}") from None
    try:
        return [
            IssuedRecord(
                serial=int(e["serial"], 16),
                name=str(e["name"]),
                type=str(e["type"]),
                prod=str(e["prod"]),
                not_after=str(e["not_after"]),
            )
            for e in doc["certificates"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise ProvisionError(f"{path}: malformed: {exc}") from None


def write_ledger(state: Path, records: Iterable[IssuedRecord]) -> None:
    """Replace ``issued.json`` with ``records``."""
    doc = {
        "format": 1,
        "certificates": [
            {
                "serial": f"{r.serial:x}",
                "name": r.name,
                "type": r.type,
                "prod": r.prod,
                "not_after": r.not_after,
            }
            for r in records
        ],
    }
    atomic_write(state / LEDGER_FILE, json.dumps(doc, indent=2) + "\n")


def iso(moment: dt.datetime) -> str:
    """``moment`` as ISO 8601 UTC with a ``Z``."""
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
