"""The project PKI: one EC P-256 root CA, participant certificates, a CRL.

Identity is the certificate (docs/architecture.md "Certificates"): CN is the
participant name, O its org, OU its type and, for admins, ``title`` its role.
The transport reads those back with :func:`identity_from_cert`.

    ca = CertificateAuthority.create("example_project")
    issued = ca.issue(participant, validity_days=365)
    identity_from_cert(issued.cert_pem).name   # "site-1"
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.errors import ConfigError, KitError, ProvisionError
from shoal.provision.names import dns_label, is_ip_address
from shoal.provision.project import KubernetesSettings, Participant

__all__ = [
    "CA_VALIDITY_DAYS",
    "CertificateAuthority",
    "Identity",
    "IssuedCertificate",
    "TLSMaterial",
    "identity_from_cert",
    "load_crl_serials",
    "load_revoked_serials",
    "private_key_pem",
    "self_signed_ca",
    "server_alt_names",
]

logger = logging.getLogger(__name__)

CA_VALIDITY_DAYS = 3650
#: Certificates start a little in the past so a peer whose clock is slightly
#: behind does not reject a freshly provisioned kit.
_CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class TLSMaterial:
    """What one side of a mutual-TLS connection needs, as PEM bytes."""

    ca_pem: bytes
    """The project's root CA certificate: the only trust anchor."""
    cert_pem: bytes
    """This participant's certificate, signed by the CA."""
    key_pem: bytes
    """This participant's private key (PKCS#8, unencrypted)."""

    def __repr__(self) -> str:
        # Keep private keys out of logs and tracebacks.
        return "TLSMaterial(ca_pem=..., cert_pem=..., key_pem=<redacted>)"


@dataclass(frozen=True)
class Identity:
    """Who a certificate says its holder is."""

    name: str
    """CN: the participant name."""
    org: str
    """O: the organisation."""
    type: str
    """OU: ``server``, ``client`` or ``admin``."""
    role: str | None
    """``title`` (OID 2.5.4.12): the admin role; ``None`` for servers and clients."""
    serial: int
    """The certificate's serial number (what a CRL lists)."""
    job_id: str | None = None
    """For a job worker's credential (``OU=worker``): the one job it may act for."""
    site_serial: int | None = None
    """For a job worker's credential: the serial of its site's certificate."""
    not_after: dt.datetime | None = field(default=None, compare=False)
    """When the certificate expires (UTC); shown by ``check_status``, not part
    of who the holder is."""


@dataclass(frozen=True)
class IssuedCertificate:
    """A freshly issued participant certificate and its private key."""

    cert: x509.Certificate
    """The signed certificate."""
    key: ec.EllipticCurvePrivateKey
    """Its private key."""

    @property
    def cert_pem(self) -> bytes:
        """The certificate as PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        return private_key_pem(self.key)


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM (what kits and state/ hold)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _single(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    attrs = name.get_attributes_for_oid(oid)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def identity_from_cert(cert_pem: bytes) -> Identity:
    """Read CN, O, OU and title of a PEM (or DER) certificate.

    Raises ``ConfigError`` when the bytes are not a certificate or lack CN,
    O or OU (i.e. it is not a shoal participant certificate).
    """
    try:
        cert = (
            x509.load_pem_x509_certificate(cert_pem)
            if b"-----BEGIN" in cert_pem
            else x509.load_der_x509_certificate(cert_pem)
        )
    except ValueError as exc:
        raise ConfigError(f"certificate: not a valid X.509 certificate: {exc}") from None
    subject = cert.subject
    name = _single(subject, NameOID.COMMON_NAME)
    org = _single(subject, NameOID.ORGANIZATION_NAME)
    ptype = _single(subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
    if not name or not org or not ptype:
        raise ConfigError(
            f"certificate {subject.rfc4514_string()!r}: needs CN, O and OU to be a shoal identity"
        )
    role = _single(subject, NameOID.TITLE) if ptype == "admin" else None
    job_id = site_serial = None
    if ptype == "worker":
        job_id = _single(subject, NameOID.USER_ID)
        serial_hex = _single(subject, NameOID.SERIAL_NUMBER) or ""
        try:
            site_serial = int(serial_hex, 16)
        except ValueError:
            site_serial = None
        if not job_id or site_serial is None:
            raise ConfigError(
                f"certificate {subject.rfc4514_string()!r}: a worker needs UID and serialNumber"
            )
    return Identity(
        name=name,
        org=org,
        type=ptype,
        role=role,
        serial=cert.serial_number,
        job_id=job_id,
        site_serial=site_serial,
        not_after=cert.not_valid_after_utc,
    )


def server_alt_names(server: Participant, kubernetes: KubernetesSettings) -> list[x509.GeneralName]:
    """SANs of the server certificate, without duplicates.

    Its name, ``localhost``, every ``host_names`` entry, ``127.0.0.1`` and the
    Kubernetes service names ``<svc>``, ``<svc>.<ns>``, ``<svc>.<ns>.svc`` and
    ``<svc>.<ns>.svc.cluster.local``.
    """
    service = dns_label(server.name)
    namespace = kubernetes.namespace_for(server)
    hosts: list[str] = [server.name, "localhost", *server.host_names, "127.0.0.1"]
    hosts += [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        if is_ip_address(host):
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        else:
            names.append(x509.DNSName(host))
    return names


def self_signed_ca(
    subject: x509.Name, key: ec.EllipticCurvePrivateKey, *, validity_days: int
) -> x509.Certificate:
    """A self-signed CA certificate that may sign leaf certificates only."""
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )


@dataclass(frozen=True)
class CertificateAuthority:
    """A project's root CA: its certificate and private key."""

    cert: x509.Certificate
    """The self-signed CA certificate (``rootCA.pem``)."""
    key: ec.EllipticCurvePrivateKey
    """The CA's private key (``rootCA.key``, never shipped in a kit)."""

    @classmethod
    def create(cls, project: str, *, validity_days: int = CA_VALIDITY_DAYS) -> CertificateAuthority:
        """A new self-signed EC P-256 root CA named after ``project``."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, f"{project} root CA"[:64]),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, project),
            ]
        )
        cert = self_signed_ca(subject, key, validity_days=validity_days)
        logger.info("created root CA for project %s (serial %x)", project, cert.serial_number)
        return cls(cert=cert, key=key)

    @classmethod
    def load(cls, cert_pem: bytes, key_pem: bytes) -> CertificateAuthority:
        """The CA stored in a project's ``state/``; ``ProvisionError`` if unusable."""
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ProvisionError(f"state: stored root CA cannot be read: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ProvisionError("state: rootCA.key is not an EC private key")
        if not public_keys_match(cert_pem, key_pem):
            raise ProvisionError("state: rootCA.key does not belong to rootCA.pem")
        if cert.not_valid_after_utc <= _now():
            raise ProvisionError(
                f"state: root CA expired on {cert.not_valid_after_utc:%Y-%m-%d}; "
                "move state/ aside to create a new one (every kit must then be re-issued)"
            )
        return cls(cert=cert, key=key)

    @property
    def cert_pem(self) -> bytes:
        """``rootCA.pem``."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """``rootCA.key`` (PKCS#8 PEM)."""
        return private_key_pem(self.key)

    def issue(
        self,
        participant: Participant,
        *,
        validity_days: int,
        kubernetes: KubernetesSettings | None = None,
    ) -> IssuedCertificate:
        """A key pair and certificate for ``participant``, signed by this CA.

        The certificate never outlives the CA (its end is clamped to the CA's).
        """
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [
            x509.NameAttribute(NameOID.COMMON_NAME, participant.name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, participant.org),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, participant.type),
        ]
        if participant.type == "admin" and participant.role:
            attrs.append(x509.NameAttribute(NameOID.TITLE, participant.role))
        now = _now()
        not_after = min(now + dt.timedelta(days=validity_days), self.cert.not_valid_after_utc)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if participant.type == "server":
            usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        if participant.type == "server":
            sans = server_alt_names(participant, kubernetes or KubernetesSettings())
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return IssuedCertificate(cert=cert, key=key)

    def sign(self, data: bytes) -> bytes:
        """An ECDSA-SHA256 signature (DER) over ``data``."""
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))

    def build_crl(
        self, serials: Iterable[int], *, previous: x509.CertificateRevocationList | None = None
    ) -> bytes:
        """A CRL (PEM) listing ``serials`` plus every entry of ``previous``.

        Earlier revocation dates are kept; the CRL number goes up by one.
        """
        now = _now()
        revoked: dict[int, dt.datetime] = {}
        number = 0
        if previous is not None:
            for entry in previous:
                revoked[entry.serial_number] = entry.revocation_date_utc
            try:
                number = previous.extensions.get_extension_for_class(
                    x509.CRLNumber
                ).value.crl_number
            except x509.ExtensionNotFound:
                number = 0
        for serial in serials:
            revoked.setdefault(serial, now)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - _CLOCK_SKEW)
            .next_update(min(now + dt.timedelta(days=365), self.cert.not_valid_after_utc))
            .add_extension(x509.CRLNumber(number + 1), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        for serial, when in sorted(revoked.items()):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        crl = builder.sign(self.key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.PEM)


def load_crl(
    crl_pem: bytes, ca_pem: bytes, *, source: Path | str
) -> x509.CertificateRevocationList:
    """Parse a CRL and check that ``ca_pem``'s CA signed it; ``KitError`` if not."""
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        raise KitError(f"{source}: CA certificate unreadable: {exc}") from None
    try:
        crl = (
            x509.load_pem_x509_crl(crl_pem)
            if b"-----BEGIN" in crl_pem
            else x509.load_der_x509_crl(crl_pem)
        )
    except ValueError as exc:
        raise KitError(f"{source}: not a valid CRL: {exc}") from None
    public_key = ca.public_key()
    if crl.issuer != ca.subject or not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise KitError(f"{source}: CRL was not issued by this project's CA")
    try:
        valid = crl.is_signature_valid(public_key)
    except InvalidSignature:
        valid = False
    if not valid:
        raise KitError(f"{source}: CRL signature does not verify against the project CA")
    return crl


def load_crl_serials(crl_pem: bytes, ca_pem: bytes, *, source: str = "CRL") -> frozenset[int]:
    """Serial numbers revoked by ``crl_pem``, once its CA signature is checked.

    For a CRL that arrived over the network (the server hands its CRL to
    sites): it is trusted only because ``ca_pem``'s CA signed it.
    """
    return frozenset(entry.serial_number for entry in load_crl(crl_pem, ca_pem, source=source))


def load_revoked_serials(crl_path: Path, ca_pem: bytes) -> frozenset[int]:
    """Serial numbers revoked by the CRL at ``crl_path`` (empty if there is none).

    The CRL's signature is checked against ``ca_pem``; a CRL not signed by
    the project CA raises ``KitError`` rather than being ignored.
    """
    crl_path = Path(crl_path)
    try:
        data = crl_path.read_bytes()
    except FileNotFoundError:
        return frozenset()
    except OSError as exc:
        raise KitError(f"{crl_path}: cannot read: {exc.strerror or exc}") from None
    crl = load_crl(data, ca_pem, source=crl_path)
    return frozenset(entry.serial_number for entry in crl)


def verify_issued_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    """True if ``cert_pem`` carries a valid signature by the CA in ``ca_pem``."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def public_keys_match(cert_pem: bytes, key_pem: bytes) -> bool:
    """True if the private key in ``key_pem`` belongs to the certificate."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return False
    cert_pub = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_pub = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return cert_pub == key_pub
