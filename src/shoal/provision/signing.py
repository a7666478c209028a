"""``startup/signature.json``: a CA-signed list of the startup files' hashes.

The file lists the SHA-256 of every other file in ``startup/`` and an ECDSA
signature by the project CA over a canonical encoding of that list (compact
JSON, sorted keys, ASCII; everything but the ``signature`` field itself). A
changed, missing or extra file in ``startup/`` is then detectable with only
the kit in hand. ``local/`` is deliberately not signed: operators edit it.

This guards against accidents and partial tampering; someone who can replace
``rootCA.pem`` *and* re-sign with their own CA makes a different kit, which
the server rejects at the TLS handshake because it trusts only the real CA.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from shoal.errors import KitError
from shoal.provision.pki import CertificateAuthority

__all__ = [
    "SIGNATURE_ALGORITHM",
    "SIGNATURE_FILE",
    "canonical_bytes",
    "sign_startup",
    "verify_startup",
]

SIGNATURE_FILE = "signature.json"
SIGNATURE_ALGORITHM = "ecdsa-p256-sha256"
CA_FILE = "rootCA.pem"


def canonical_bytes(document: Mapping[str, Any]) -> bytes:
    """The bytes the CA signs: ``document`` without ``signature``, canonical JSON."""
    body = {k: v for k, v in document.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _startup_files(startup: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for entry in sorted(startup.iterdir()):
        if entry.name == SIGNATURE_FILE:
            continue
        if not entry.is_file() or entry.is_symlink():
            raise KitError(f"{entry}: not a regular file; startup/ holds only signed files")
        files[entry.name] = entry
    return files


def sign_startup(startup: Path, ca: CertificateAuthority, *, project: str, name: str) -> Path:
    """Hash every file in ``startup`` and write the signed ``signature.json``."""
    document: dict[str, Any] = {
        "format": 1,
        "algorithm": SIGNATURE_ALGORITHM,
        "project": project,
        "name": name,
        "files": {fname: _sha256(path) for fname, path in _startup_files(startup).items()},
    }
    document["signature"] = base64.b64encode(ca.sign(canonical_bytes(document))).decode()
    target = startup / SIGNATURE_FILE
    target.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return target


def verify_startup(startup: Path) -> Mapping[str, str]:
    """Check ``startup/signature.json`` against the files and the kit's CA.

    Returns the signed ``{file name: sha256}``. Raises ``KitError`` naming the
    first file that is missing, changed or not part of the signed kit.
    """
    sig_path = startup / SIGNATURE_FILE
    try:
        document = json.loads(sig_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KitError(f"{sig_path}: missing; the kit is not signed") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KitError(f"{sig_path}: unreadable: {exc}") from None
    if not isinstance(document, dict) or document.get("algorithm") != SIGNATURE_ALGORITHM:
        raise KitError(f"{sig_path}: not a shoal signature file ({SIGNATURE_ALGORITHM})")
    listed = document.get("files")
    if (
        not isinstance(listed, dict)
        or CA_FILE not in listed
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in listed.items())
    ):
        raise KitError(f"{sig_path}: 'files' must map file names to sha256, including {CA_FILE}")
    for fname in listed:
        if "/" in fname or "\\" in fname or fname in {"", ".", "..", SIGNATURE_FILE}:
            raise KitError(f"{sig_path}: bad file name {fname!r}")

    # The CA file's hash is checked before it is trusted to check the signature.
    present = _startup_files(startup)
    for fname, expected in sorted(listed.items(), key=lambda kv: kv[0] != CA_FILE):
        path = startup / fname
        if fname not in present:
            raise KitError(f"{path}: missing from the kit")
        if _sha256(path) != expected:
            raise KitError(f"{path}: changed since provisioning (sha256 mismatch)")
    for fname in present:
        if fname not in listed:
            raise KitError(f"{startup / fname}: not part of the signed kit")

    try:
        ca = x509.load_pem_x509_certificate((startup / CA_FILE).read_bytes())
        signature = base64.b64decode(str(document.get("signature", "")), validate=True)
    except (ValueError, binascii.Error) as exc:
        raise KitError(f"{sig_path}: cannot check signature: {exc}") from None
    public_key = ca.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise KitError(f"{startup / CA_FILE}: not an EC certificate")
    try:
        public_key.verify(signature, canonical_bytes(document), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise KitError(f"{sig_path}: signature does not verify against {CA_FILE}") from None
    return dict(listed)
