"""Jobs signed by their submitter: what the admin signs, what a site checks.

The admin's tooling signs each job it submits with the admin's own key (the
one in the admin kit, the key of its TLS certificate); the server stores the
signature with the job and hands it, with the signer's certificate, to every
site, which checks it before it unpacks anything (docs/security.md "Signed
jobs").

What is signed is a small JSON document, in the canonical form of the signed
startup kits (:func:`shoal.provision.signing.canonical_bytes`: sorted keys,
compact, ASCII, everything but ``signature``)::

    {"format": 1, "kind": "shoal-job", "algorithm": "ecdsa-p256-sha256",
     "job_id": "<uuid>", "archive_sha256": "<hex>",
     "submitter": "admin@nvidia.com", "signed_at": "2026-12-05T13:20:00+00:00"}

* ``archive_sha256`` binds the exact bytes of the archive (``job.zip``): its
  name, workflow and code are inside it.
* ``job_id`` binds the signature to one job, so it cannot be copied onto
  another job, even one with the same archive. The admin's tool picks the id
  (a random UUID) before it signs, and the server adopts it; the server
  therefore never has to choose an id the signature could not name.
* ``submitter`` is the signer's name; a site also checks that the job's
  recorded submitter is the signer.
* ``kind`` keeps this signature from being taken for any other document the
  same key might sign one day.

    sig = sign_job(job_id=new_job_id(), archive_sha256=digest, tls=kit.tls)
    signer = verify_job_signature(sig.to_json(), ca_pem=ca, job_id=sig.job_id,
                                  archive_sha256=digest, submitter=kit.name)

Only primitives of ``cryptography`` (ECDSA P-256 with SHA-256, X.509).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shoal.errors import ConfigError, JobValidationError
from shoal.provision.pki import TLSMaterial, identity_from_cert
from shoal.provision.signing import SIGNATURE_ALGORITHM, canonical_bytes

__all__ = [
    "FORMAT",
    "KIND",
    "SIGNING_ROLES",
    "JobSignature",
    "Signer",
    "new_job_id",
    "sign_job",
    "verify_job_signature",
]

FORMAT = 1
KIND = "shoal-job"
#: The admin roles that may submit a job (``shoal.server.authz``): only their
#: signatures make a job runnable. A ``member`` cannot submit, so a job
#: signed by one was never submitted through the admin API.
SIGNING_ROLES = ("project_admin", "org_admin", "lead")

_FIELDS = ("job_id", "archive_sha256", "submitter", "signed_at")


@dataclass(frozen=True)
class Signer:
    """Who signed a job, as its verified certificate says."""

    name: str
    """CN: the admin's name."""
    org: str
    """O: the admin's organisation."""
    role: str
    """The admin's role (``title``)."""
    serial: int
    """The certificate's serial number."""

    def to_dict(self) -> dict[str, str]:
        """For the audit trail and a site's verdict."""
        return {
            "name": self.name,
            "org": self.org,
            "role": self.role,
            "serial": format(self.serial, "x"),
        }


@dataclass(frozen=True)
class JobSignature:
    """A signed document and the signer's certificate, as stored and sent."""

    document: Mapping[str, Any]
    """The signed fields plus ``signature`` (base64 DER)."""
    certificate: str
    """The signer's certificate (PEM), issued by the project CA."""

    @property
    def job_id(self) -> str:
        return str(self.document["job_id"])

    @property
    def archive_sha256(self) -> str:
        return str(self.document["archive_sha256"])

    @property
    def submitter(self) -> str:
        return str(self.document["submitter"])

    def to_json(self) -> dict[str, Any]:
        """The JSON form the server stores and passes on."""
        return {"document": dict(self.document), "certificate": self.certificate}

    @classmethod
    def from_json(cls, data: object) -> JobSignature:
        """Read the JSON form; ``JobValidationError`` naming the bad field."""
        if not isinstance(data, Mapping):
            raise JobValidationError("job signature: must be a JSON object")
        document, cert = data.get("document"), data.get("certificate")
        if not isinstance(document, Mapping):
            raise JobValidationError("job signature: 'document' must be a JSON object")
        if not isinstance(cert, str) or "-----BEGIN CERTIFICATE-----" not in cert:
            raise JobValidationError("job signature: 'certificate' must be a PEM certificate")
        if document.get("kind") != KIND or document.get("format") != FORMAT:
            raise JobValidationError(
                f"job signature: not a shoal job signature (kind {KIND!r}, format {FORMAT})"
            )
        if document.get("algorithm") != SIGNATURE_ALGORITHM:
            raise JobValidationError(
                f"job signature: algorithm must be {SIGNATURE_ALGORITHM!r}, "
                f"got {document.get('algorithm')!r}"
            )
        for key in (*_FIELDS, "signature"):
            if not isinstance(document.get(key), str) or not document[key]:
                raise JobValidationError(f"job signature: '{key}' must be a non-empty string")
        extra = set(document) - {*_FIELDS, "signature", "kind", "format", "algorithm"}
        if extra:
            raise JobValidationError(f"job signature: unknown fields {sorted(extra)}")
        return cls(document=dict(document), certificate=cert)


def new_job_id() -> str:
    """A fresh job id: what the submitter signs and the server adopts."""
    return str(uuid.uuid4())


def sign_job(
    *,
    job_id: str,
    archive_sha256: str,
    tls: TLSMaterial,
    now: dt.datetime | None = None,
) -> JobSignature:
    """Sign ``archive_sha256`` for ``job_id`` with the key of ``tls`` (an admin kit's).

    The submitter named is the certificate's CN; ``ConfigError`` if the kit's
    key is not an EC key.
    """
    key = serialization.load_pem_private_key(tls.key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError("admin kit: the private key is not an EC key; it cannot sign jobs")
    who = identity_from_cert(tls.cert_pem)
    document: dict[str, Any] = {
        "format": FORMAT,
        "kind": KIND,
        "algorithm": SIGNATURE_ALGORITHM,
        "job_id": job_id,
        "archive_sha256": archive_sha256,
        "submitter": who.name,
        "signed_at": (now or dt.datetime.now(dt.timezone.utc)).isoformat(timespec="seconds"),
    }
    signature = key.sign(canonical_bytes(document), ec.ECDSA(hashes.SHA256()))
    document["signature"] = base64.b64encode(signature).decode("ascii")
    return JobSignature(document=document, certificate=tls.cert_pem.decode("ascii"))


def verify_job_signature(
    signature: object,
    *,
    ca_pem: bytes,
    job_id: str,
    archive_sha256: str,
    submitter: str,
    submitter_org: str | None = None,
    revoked: frozenset[int] = frozenset(),
    now: dt.datetime | None = None,
) -> Signer:
    """Check a job's signature; return its signer, or raise ``JobValidationError``.

    ``signature`` is the stored JSON form (``None`` when the job has none).
    It must be issued by the CA in ``ca_pem``, valid ``now``, not among
    ``revoked``, an admin's with a role that may submit jobs, the signer must
    be the job's ``submitter`` (and ``submitter_org``), and it must cover
    exactly ``archive_sha256`` and ``job_id``. Each refusal says which.
    """
    if signature is None:
        raise JobValidationError(
            f"job {job_id} is not signed by its submitter (it was submitted before signed "
            "jobs, or its signature was removed on the server); sites run only signed "
            "jobs: submit it again"
        )
    sig = JobSignature.from_json(signature)
    try:
        cert = x509.load_pem_x509_certificate(sig.certificate.encode("ascii"))
        ca = x509.load_pem_x509_certificate(ca_pem)
    except (ValueError, UnicodeEncodeError) as exc:
        raise JobValidationError(f"job signature: certificate unreadable: {exc}") from None
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise JobValidationError(
            f"job signature: the signer's certificate ({cert.subject.rfc4514_string()}) "
            "was not issued by this project's CA"
        ) from None
    try:
        who = identity_from_cert(sig.certificate.encode("ascii"))
    except ConfigError as exc:
        raise JobValidationError(f"job signature: {exc}") from None
    when = now or dt.datetime.now(dt.timezone.utc)
    if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
        raise JobValidationError(
            f"job signature: {who.name}'s certificate is not valid now (valid "
            f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d})"
        )
    if who.serial in revoked:
        raise JobValidationError(
            f"job signature: {who.name}'s certificate (serial {who.serial:x}) is revoked"
        )
    if who.type != "admin":
        raise JobValidationError(
            f"job signature: signed by {who.name}, a {who.type}; only admins sign jobs"
        )
    if (who.role or "member") not in SIGNING_ROLES:
        raise JobValidationError(
            f"job signature: signed by {who.name}, whose role {who.role or 'member'!r} may "
            f"not submit jobs (roles that may: {', '.join(SIGNING_ROLES)})"
        )
    public_key = cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise JobValidationError(f"job signature: {who.name}'s certificate is not an EC key")
    try:
        raw = base64.b64decode(str(sig.document["signature"]), validate=True)
        public_key.verify(raw, canonical_bytes(sig.document), ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        raise JobValidationError(
            f"job signature: does not verify against {who.name}'s certificate "
            "(the signed fields were changed, or it was made with another key)"
        ) from None
    if sig.submitter != who.name:
        raise JobValidationError(
            f"job signature: names {sig.submitter!r} as submitter but was made by {who.name}"
        )
    if sig.job_id != job_id:
        raise JobValidationError(
            f"job signature: made for job {sig.job_id}, not for this job {job_id} "
            "(a signature copied from another job)"
        )
    if sig.archive_sha256 != archive_sha256:
        raise JobValidationError(
            f"job archive changed after it was signed: its sha256 is {archive_sha256[:16]}..., "
            f"{who.name} signed {sig.archive_sha256[:16]}..."
        )
    if who.name != submitter or (submitter_org is not None and who.org != submitter_org):
        raise JobValidationError(
            f"job signature: the job is recorded as submitted by {submitter}"
            f"{f' ({submitter_org})' if submitter_org is not None else ''}, "
            f"but {who.name} ({who.org}) signed it"
        )
    return Signer(name=who.name, org=who.org, role=who.role or "member", serial=who.serial)
