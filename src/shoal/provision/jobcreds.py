"""Per-job credentials: what a site's job worker uses instead of the site's key.

A job worker talks to the server over mutual TLS, but it runs job code, so
it must never hold the site's private key. Instead the site daemon makes a
fresh key pair for each job and sends the public half when it fetches the
job; the server answers with a certificate from its **job credential
authority** — a CA of the server's own, trusted only on its site port,
never by sites and never by the admin port. The certificate says:

    CN=site-1, O=org, OU=worker, UID=<job id>, serialNumber=<site cert serial>

and the server lets it do one thing: the ``Work`` stream of that job, while
the job runs, while the site's own certificate is not revoked. Stolen, it
is useless for anything else and worthless once the job ends.

    authority = JobCredentialAuthority.load_or_create(workspace / "jobca", "server1")
    key_pem, public_pem = new_worker_key()
    cert_pem = authority.issue(site_identity, job_id, public_pem)
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.errors import ConfigError, PeerRejectedError
from shoal.provision.pki import Identity, private_key_pem, self_signed_ca

__all__ = ["WORKER_VALIDITY", "JobCredentialAuthority", "new_worker_key"]

log = logging.getLogger(__name__)

#: How long a worker certificate is valid; the server also ends it with its job.
WORKER_VALIDITY = dt.timedelta(days=30)
_CLOCK_SKEW = dt.timedelta(minutes=5)
_MAX_PUBLIC_KEY_BYTES = 4096


def new_worker_key() -> tuple[bytes, bytes]:
    """A fresh EC P-256 key pair: (private PKCS#8 PEM, public SubjectPublicKeyInfo PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = private_key_pem(key)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@dataclass(frozen=True)
class JobCredentialAuthority:
    """The server's CA for job workers' certificates."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def load_or_create(cls, folder: Path, server_name: str) -> JobCredentialAuthority:
        """The authority kept in ``folder`` (0700), made on first use.

        Kept across restarts so that workers of a job resumed after a server
        restart are still recognised.
        """
        cert_path, key_path = folder / "job_ca.pem", folder / "job_ca.key"
        if cert_path.is_file() and key_path.is_file():
            try:
                cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
                key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            except ValueError as exc:
                raise ConfigError(f"{folder}: job credential authority unreadable: {exc}") from None
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ConfigError(f"{key_path}: not an EC private key")
            if cert.not_valid_after_utc > dt.datetime.now(dt.timezone.utc) + WORKER_VALIDITY:
                return cls(cert=cert, key=key)
            log.info("job credential authority in %s expires soon; making a new one", folder)
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
        authority = cls._create(server_name)
        _write_private(key_path, authority.key_pem)
        cert_path.write_bytes(authority.ca_pem)
        return authority

    @classmethod
    def _create(cls, server_name: str) -> JobCredentialAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        # A random tail keeps this subject distinct from any other CA's, so an
        # issuer name alone tells the server which CA a certificate came from.
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, f"{server_name} job credentials"[:64]),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "job-ca"),
                x509.NameAttribute(NameOID.SERIAL_NUMBER, secrets.token_hex(8)),
            ]
        )
        cert = self_signed_ca(subject, key, validity_days=3650)
        return cls(cert=cert, key=key)

    @property
    def ca_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return private_key_pem(self.key)

    def issue(self, site: Identity, job_id: str, public_key_pem: bytes) -> bytes:
        """A worker certificate (PEM) for ``site``'s worker of ``job_id``."""
        if site.type != "client":
            raise PeerRejectedError(f"{site.name} is a {site.type}; only sites get job credentials")
        if len(public_key_pem) > _MAX_PUBLIC_KEY_BYTES:
            raise PeerRejectedError("worker public key too large")
        try:
            public = serialization.load_pem_public_key(public_key_pem)
        except (ValueError, TypeError) as exc:
            raise PeerRejectedError(f"worker public key unreadable: {exc}") from None
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise PeerRejectedError("worker public key must be an EC key")
        now = dt.datetime.now(dt.timezone.utc)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, site.name),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, site.org),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "worker"),
                x509.NameAttribute(NameOID.USER_ID, job_id),
                x509.NameAttribute(NameOID.SERIAL_NUMBER, f"{site.serial:x}"),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(min(now + WORKER_VALIDITY, self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def issued(self, cert_pem: bytes) -> bool:
        """Whether ``cert_pem`` was signed by this authority."""
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            if cert.issuer != self.cert.subject:
                return False
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True
