"""Renewing one participant's certificate, adding a site, and expiry warnings.

The kits are real (``provision``); the short-lived certificates of the
expiry tests are made here with ``cryptography``.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shoal.cli.app import main
from shoal.errors import ConfigError, NotFoundError, ProvisionError
from shoal.provision import TLSMaterial, identity_from_cert, load_kit, provision
from shoal.provision.expiry import ExpiryWatch, expiry_warnings
from shoal.provision.lifecycle import add_participants, renew
from shoal.provision.pki import verify_issued_by

from .conftest import PROJECT_YML, snapshot


@pytest.fixture
def project(tmp_path: Path) -> Path:
    path = tmp_path / "project.yml"
    path.write_text(PROJECT_YML, encoding="utf-8")
    provision(path, tmp_path / "ws")
    return path


def test_renew_writes_only_that_kit_and_leaves_everything_else_alone(
    project: Path, tmp_path: Path
) -> None:
    project_dir = tmp_path / "ws" / "example_project"
    before = snapshot(project_dir)
    old = load_kit(project_dir / "prod_00" / "site-1")
    result = renew(project, tmp_path / "ws", ["site-1"], validity_days=10)
    assert result.prod_dir == project_dir / "prod_01"
    assert list(result.kits) == ["site-1"]
    assert sorted(p.name for p in result.prod_dir.iterdir()) == ["site-1"]
    after = snapshot(project_dir)
    # Every file there before is unchanged (the CA and its key included)
    # but the ledger, which now lists the new certificate too.
    changed = {k for k in before if before[k] != after.get(k)}
    assert changed == {"state/issued.json"}
    new = load_kit(result.kits["site-1"], expected_type="client")
    assert new.tls.ca_pem == old.tls.ca_pem
    assert verify_issued_by(new.tls.cert_pem, old.tls.ca_pem)
    assert (
        identity_from_cert(new.tls.cert_pem).serial != identity_from_cert(old.tls.cert_pem).serial
    )
    assert new.tls.key_pem != old.tls.key_pem
    ledger = json.loads((project_dir / "state" / "issued.json").read_text())["certificates"]
    assert [(c["name"], c["prod"]) for c in ledger if c["name"] == "site-1"] == [
        ("site-1", "prod_00"),
        ("site-1", "prod_01"),
    ]
    left = x509.load_pem_x509_certificate(new.tls.cert_pem).not_valid_after_utc - dt.datetime.now(
        dt.timezone.utc
    )
    assert dt.timedelta(days=9) < left <= dt.timedelta(days=10)


def test_add_writes_only_the_new_site_from_the_same_ca(project: Path, tmp_path: Path) -> None:
    project_dir = tmp_path / "ws" / "example_project"
    before = snapshot(project_dir)
    with pytest.raises(ConfigError, match="no participant named site-3; add it"):
        add_participants(project, tmp_path / "ws", ["site-3"])
    assert snapshot(project_dir) == before
    project.write_text(
        PROJECT_YML + "  - name: site-3\n    type: client\n    org: org3\n", encoding="utf-8"
    )
    result = add_participants(project, tmp_path / "ws", ["site-3"])
    assert list(result.kits) == ["site-3"]
    kit = load_kit(result.kits["site-3"], expected_type="client")
    assert kit.tls.ca_pem == (project_dir / "state" / "rootCA.pem").read_bytes()
    after = snapshot(project_dir)
    assert {k for k in before if before[k] != after.get(k)} == {
        "state/issued.json",
        "state/project.yml",
    }
    # A second add of the same name is a renewal, and says so.
    with pytest.raises(ConfigError, match="use --renew"):
        add_participants(project, tmp_path / "ws", ["site-3"])


def test_renew_refuses_names_never_issued_and_projects_never_provisioned(
    project: Path, tmp_path: Path
) -> None:
    with pytest.raises(NotFoundError, match="never had a certificate"):
        renew(project, tmp_path / "ws", ["site-9"])
    with pytest.raises(NotFoundError, match="has not been provisioned"):
        renew(project, tmp_path / "elsewhere", ["site-1"])
    with pytest.raises(ProvisionError, match="no CA yet"):
        provision(project, tmp_path / "elsewhere", only=["site-1"])


def test_cli_renew_and_add(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = str(tmp_path / "ws")
    assert main(["provision", "-p", str(project), "-w", ws, "--renew", "site-2"]) == 0
    out = capsys.readouterr().out
    assert "site-2" in out and "prod_01" in out and "other kits unchanged" in out
    assert main(["provision", "-p", str(project), "-w", ws, "--add-site", "site-2"]) == 2
    assert "use --renew" in capsys.readouterr().err


# -- expiry -------------------------------------------------------------------------


def _cert(
    name: str, days: float, *, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None = None
) -> tuple[bytes, x509.Name, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(issuer_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), subject, key


def _tls(site_days: float, ca_days: float) -> TLSMaterial:
    ca_pem, ca_name, ca_key = _cert("ca", ca_days)
    site_pem, _, key = _cert("site-1", site_days, issuer=(ca_name, ca_key))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return TLSMaterial(ca_pem=ca_pem, cert_pem=site_pem, key_pem=key_pem)


def test_a_certificate_ending_in_10_days_is_warned_about_with_what_to_do() -> None:
    [line] = expiry_warnings(_tls(10, 3650), "site-1")
    assert line.startswith("certificate of site-1 expires in 9 days (")
    assert "shoal provision --renew site-1" in line
    assert expiry_warnings(_tls(31, 3650), "site-1") == []


def test_the_ca_and_an_expired_certificate_are_warned_about() -> None:
    lines = expiry_warnings(_tls(-1, 10), "site-1")
    assert lines[0].startswith("certificate of site-1 EXPIRED on ")
    assert lines[1].startswith("the project CA expires in 9 days")


def test_the_watch_logs_and_reports_changes(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[list[str]] = []
    watch = ExpiryWatch(_tls(10, 3650), "site-1", on_change=seen.append)
    with caplog.at_level("WARNING", logger="shoal.provision.expiry"):
        watch.check()
        watch.check()
    assert len(seen) == 1 and seen[0] == watch.warnings
    assert [r.getMessage() for r in caplog.records] == watch.warnings * 2
