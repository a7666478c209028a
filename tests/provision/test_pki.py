"""Certificates checked with the openssl CLI and with cryptography."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.errors import ConfigError, KitError
from shoal.provision import (
    Identity,
    ProvisionResult,
    identity_from_cert,
    load_revoked_serials,
    provision,
)
from shoal.provision.pki import CertificateAuthority

from .conftest import PROJECT_YML

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")

EXPECTED = {
    "server1": ("server", "nvidia", None, "server.crt"),
    "site-1": ("client", "nvidia", None, "client.crt"),
    "site-2": ("client", "org2", None, "client.crt"),
    "admin@nvidia.com": ("admin", "nvidia", "project_admin", "client.crt"),
    "lead@org2.com": ("admin", "org2", "lead", "client.crt"),
}


def _openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, check=False, timeout=30
    )


def _cert(kit: Path, name: str) -> Path:
    return kit / "startup" / EXPECTED[name][3]


def test_openssl_verifies_every_cert(provisioned: ProvisionResult) -> None:
    assert set(provisioned.kits) == set(EXPECTED)
    for name, kit in provisioned.kits.items():
        ca = kit / "startup" / "rootCA.pem"
        result = _openssl("verify", "-CAfile", ca, _cert(kit, name))
        assert result.returncode == 0, (name, result.stdout, result.stderr)
        assert ": OK" in result.stdout


def test_openssl_shows_subject_sans_and_role(provisioned: ProvisionResult) -> None:
    text = _openssl("x509", "-noout", "-text", "-in", _cert(provisioned.kits["server1"], "server1"))
    out = text.stdout
    assert "CN = server1" in out and "O = nvidia" in out and "OU = server" in out
    for san in (
        "DNS:server1",
        "DNS:localhost",
        "DNS:fl.example.com",
        "IP Address:10.1.2.3",
        "IP Address:127.0.0.1",
        "DNS:server1.shoal-infra",
        "DNS:server1.shoal-infra.svc",
        "DNS:server1.shoal-infra.svc.cluster.local",
    ):
        assert san in out, san
    assert "TLS Web Server Authentication" in out
    assert "ASN1 OID: prime256v1" in out

    admin = _openssl(
        "x509", "-noout", "-text", "-in", _cert(provisioned.kits["lead@org2.com"], "lead@org2.com")
    ).stdout
    assert "CN = lead@org2.com" in admin and "O = org2" in admin and "OU = admin" in admin
    assert "title = lead" in admin
    assert "TLS Web Client Authentication" in admin
    assert "TLS Web Server Authentication" not in admin


def test_other_projects_ca_is_rejected(provisioned: ProvisionResult, tmp_path: Path) -> None:
    project = tmp_path / "project.yml"
    project.write_text(PROJECT_YML)
    other = provision(project, tmp_path / "ws")  # same project name, different workspace: new CA
    site = provisioned.kits["site-1"]
    foreign_ca = other.kits["site-1"] / "startup" / "rootCA.pem"
    result = _openssl("verify", "-CAfile", foreign_ca, _cert(site, "site-1"))
    assert result.returncode != 0


def test_extensions_and_identity(provisioned: ProvisionResult) -> None:
    startup = provisioned.kits["server1"] / "startup"
    ca = x509.load_pem_x509_certificate((startup / "rootCA.pem").read_bytes())
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca
    serials = set()
    for name, kit in provisioned.kits.items():
        pem = _cert(kit, name).read_bytes()
        cert = x509.load_pem_x509_certificate(pem)
        ptype, org, role, _ = EXPECTED[name]
        ident = identity_from_cert(pem)
        assert ident == Identity(
            name=name, org=org, type=ptype, role=role, serial=cert.serial_number
        )
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
        assert (ExtendedKeyUsageOID.SERVER_AUTH in usages) == (ptype == "server")
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert 365 <= lifetime.days <= 366
        serials.add(cert.serial_number)
    assert len(serials) == len(provisioned.kits)
    ca_lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert ca_lifetime.days >= 3650


def test_validity_days(tmp_path: Path) -> None:
    project = tmp_path / "project.yml"
    project.write_text(PROJECT_YML)
    result = provision(project, tmp_path / "ws", validity_days=10)
    cert = x509.load_pem_x509_certificate(
        (result.kits["site-1"] / "startup" / "client.crt").read_bytes()
    )
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 10


def test_server_ip_name_goes_in_ip_san() -> None:
    from shoal.provision import KubernetesSettings, Participant
    from shoal.provision.pki import server_alt_names

    server = Participant("10.0.0.1", "server", "o", host_names=("::1", "a.example"))
    sans = server_alt_names(server, KubernetesSettings())
    assert x509.IPAddress(ipaddress.ip_address("10.0.0.1")) in sans
    assert x509.IPAddress(ipaddress.ip_address("::1")) in sans
    assert x509.DNSName("a.example") in sans


def test_identity_from_cert_rejects_garbage() -> None:
    with pytest.raises(ConfigError):
        identity_from_cert(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    ca = CertificateAuthority.create("p")
    with pytest.raises(ConfigError, match="needs CN, O and OU"):
        identity_from_cert(ca.cert_pem)  # a CA certificate has no OU


def test_crl_round_trip(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("p")
    crl = tmp_path / "crl.pem"
    assert load_revoked_serials(crl, ca.cert_pem) == frozenset()
    crl.write_bytes(ca.build_crl([5, 7]))
    assert load_revoked_serials(crl, ca.cert_pem) == {5, 7}
    previous = x509.load_pem_x509_crl(crl.read_bytes())
    crl.write_bytes(ca.build_crl([9], previous=previous))
    assert load_revoked_serials(crl, ca.cert_pem) == {5, 7, 9}
    number = x509.load_pem_x509_crl(crl.read_bytes()).extensions.get_extension_for_class(
        x509.CRLNumber
    )
    assert number.value.crl_number == 2
    assert _openssl("crl", "-in", crl, "-noout", "-CAfile", _write(tmp_path, ca)).returncode == 0

    other = CertificateAuthority.create("p")
    with pytest.raises(KitError, match="not issued by this project's CA|does not verify"):
        load_revoked_serials(crl, other.cert_pem)
    crl.write_bytes(b"garbage")
    with pytest.raises(KitError, match="not a valid CRL"):
        load_revoked_serials(crl, ca.cert_pem)


def _write(tmp_path: Path, ca: CertificateAuthority) -> Path:
    path = tmp_path / "ca.pem"
    path.write_bytes(ca.cert_pem)
    return path
