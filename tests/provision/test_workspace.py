"""What provision() writes: layout, configs, modes, re-runs, atomicity, revocation."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509

from shoal.errors import ConfigError, NotFoundError, ProvisionError
from shoal.provision import ProvisionResult, load_kit, load_revoked_serials, provision, revoke

from .conftest import PROJECT_YML, snapshot

SERVER_STARTUP = {
    "rootCA.pem",
    "server.crt",
    "server.key",
    "fed_server.json",
    "start.sh",
    "sub_start.sh",
    "stop_fl.sh",
    "signature.json",
}
CLIENT_STARTUP = {
    "rootCA.pem",
    "client.crt",
    "client.key",
    "fed_client.json",
    "start.sh",
    "sub_start.sh",
    "stop_fl.sh",
    "signature.json",
}
ADMIN_STARTUP = {
    "rootCA.pem",
    "client.crt",
    "client.key",
    "fed_admin.json",
    "fl_admin.sh",
    "signature.json",
}


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def _json(path: Path) -> object:
    return json.loads(path.read_text())


def test_layout(sample_provisioned: ProvisionResult) -> None:
    prod = sample_provisioned.prod_dir
    assert prod.name == "prod_00" and prod.parent.name == "example_project"
    assert sample_provisioned.ca_created
    assert _names(prod) == {"server1", "site-1", "site-2", "admin@nvidia.com"}
    assert _names(prod.parent) == {"state", "prod_00"}
    assert {"rootCA.pem", "rootCA.key", "project.yml", "issued.json"} <= _names(
        prod.parent / "state"
    )

    server = prod / "server1"
    assert _names(server) == {"startup", "local", "readme.txt"}
    assert _names(server / "startup") == SERVER_STARTUP
    assert _names(server / "local") == {"log_config.json", "resources.json"}
    for site in ("site-1", "site-2"):
        assert _names(prod / site) == {"startup", "local", "readme.txt"}
        assert _names(prod / site / "startup") == CLIENT_STARTUP
    admin = prod / "admin@nvidia.com"
    assert _names(admin) == {"startup", "local", "transfer", "readme.txt"}
    assert _names(admin / "startup") == ADMIN_STARTUP
    assert _names(admin / "transfer") == set()
    assert sample_provisioned.kits == {
        name: prod / name for name in ("server1", "site-1", "site-2", "admin@nvidia.com")
    }


def test_ca_key_never_in_a_kit(sample_provisioned: ProvisionResult) -> None:
    ca_key = (sample_provisioned.prod_dir.parent / "state" / "rootCA.key").read_bytes()
    for path in sample_provisioned.prod_dir.rglob("*"):
        if path.is_file():
            assert path.read_bytes() != ca_key, path
            assert path.name != "rootCA.key"


def test_modes(sample_provisioned: ProvisionResult) -> None:
    state = sample_provisioned.prod_dir.parent / "state"
    keys = [state / "rootCA.key", *sample_provisioned.prod_dir.glob("*/startup/*.key")]
    assert len(keys) == 5
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    for script in sample_provisioned.prod_dir.glob("*/startup/*.sh"):
        assert os.access(script, os.X_OK), script


def test_configs_match_the_contract(sample_provisioned: ProvisionResult) -> None:
    prod = sample_provisioned.prod_dir
    assert _json(prod / "server1" / "startup" / "fed_server.json") == {
        "format": 1,
        "project": "example_project",
        "name": "server1",
        "type": "server",
        "org": "nvidia",
        "fed_learn_port": 8002,
        "admin_port": 8003,
        "health_port": 8004,
        "host_names": ["server1", "localhost"],
        "heartbeat_timeout_s": 30,
        "participants": [
            {"name": "site-1", "type": "client", "org": "nvidia"},
            {"name": "site-2", "type": "client", "org": "nvidia"},
            {"name": "admin@nvidia.com", "type": "admin", "org": "nvidia", "role": "project_admin"},
        ],
        "kubernetes": {"namespace": "shoal-infra", "service": "server1"},
    }
    assert _json(prod / "site-1" / "startup" / "fed_client.json") == {
        "format": 1,
        "project": "example_project",
        "name": "site-1",
        "type": "client",
        "org": "nvidia",
        "server": {"name": "server1", "host": "server1", "fed_learn_port": 8002},
        "kubernetes": {"namespace": "shoal-site-1"},
    }
    assert _json(prod / "admin@nvidia.com" / "startup" / "fed_admin.json") == {
        "format": 1,
        "project": "example_project",
        "name": "admin@nvidia.com",
        "type": "admin",
        "org": "nvidia",
        "role": "project_admin",
        "server": {"name": "server1", "host": "server1", "admin_port": 8003},
    }
    log_config = _json(prod / "site-1" / "local" / "log_config.json")
    assert isinstance(log_config, dict) and log_config["version"] == 1


def test_host_names_in_server_config(provisioned: ProvisionResult) -> None:
    doc = _json(provisioned.kits["server1"] / "startup" / "fed_server.json")
    assert isinstance(doc, dict)
    assert doc["host_names"] == ["server1", "localhost", "fl.example.com", "10.1.2.3"]


def test_rerun_adds_prod_01_with_same_ca(tmp_path: Path) -> None:
    project = tmp_path / "project.yml"
    project.write_text(PROJECT_YML)
    workspace = tmp_path / "ws"
    first = provision(project, workspace)
    before = snapshot(first.prod_dir)
    # A site added later is trusted by the server provisioned earlier (same CA).
    project.write_text(PROJECT_YML + "  - {name: site-3, type: client, org: org3}\n")
    second = provision(project, workspace)
    assert second.prod_dir.name == "prod_01" and not second.ca_created
    assert snapshot(first.prod_dir) == before
    ca_first = (first.kits["server1"] / "startup" / "rootCA.pem").read_bytes()
    ca_second = (second.kits["site-3"] / "startup" / "rootCA.pem").read_bytes()
    assert ca_first == ca_second
    cert = x509.load_pem_x509_certificate(
        (second.kits["site-3"] / "startup" / "client.crt").read_bytes()
    )
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_first))
    state = second.prod_dir.parent / "state"
    assert (state / "project.yml").read_text() == project.read_text()
    ledger = _json(state / "issued.json")
    assert isinstance(ledger, dict) and len(ledger["certificates"]) == 5 + 6
    assert not [p for p in second.prod_dir.parent.iterdir() if p.name.startswith(".")]


def test_unwritable_workspace(tmp_path: Path) -> None:
    project = tmp_path / "project.yml"
    project.write_text(PROJECT_YML)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    before = snapshot(tmp_path)
    with pytest.raises(ProvisionError, match="workspace: "):
        provision(project, blocker / "ws")
    with pytest.raises(ProvisionError, match="workspace: "):
        provision(project, blocker)
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_workspace(tmp_path: Path) -> None:
    project = tmp_path / "project.yml"
    project.write_text(PROJECT_YML)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    workspace.chmod(0o500)
    try:
        with pytest.raises(ProvisionError, match="workspace: "):
            provision(project, workspace)
        assert list(workspace.iterdir()) == []
    finally:
        workspace.chmod(0o700)


def test_failure_mid_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project.yml"
    project.write_text(PROJECT_YML)
    workspace = tmp_path / "ws"
    provision(project, workspace)
    before = snapshot(workspace)

    import shoal.provision.builder as builder

    def boom(*args: object, **kwargs: object) -> object:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(builder, "sign_startup", boom)
    with pytest.raises(ProvisionError, match="No space left on device"):
        provision(project, workspace)
    assert snapshot(workspace) == before
    with pytest.raises(ProvisionError):
        provision(project, tmp_path / "fresh" / "ws")
    assert not (tmp_path / "fresh").exists()


def test_bad_validity(tmp_path: Path) -> None:
    project = tmp_path / "project.yml"
    project.write_text(PROJECT_YML)
    with pytest.raises(ConfigError, match="validity_days"):
        provision(project, tmp_path / "ws", validity_days=0)
    assert not (tmp_path / "ws").exists()


def test_revoke(tmp_path: Path) -> None:
    project = tmp_path / "project.yml"
    project.write_text(PROJECT_YML)
    workspace = tmp_path / "ws"
    first = provision(project, workspace)
    second = provision(project, workspace)
    site2 = [load_kit(r.kits["site-2"]).tls.cert_pem for r in (first, second)]
    serials = {x509.load_pem_x509_certificate(pem).serial_number for pem in site2}
    before_signed = snapshot(first.kits["server1"] / "startup")

    crl = revoke(project, workspace, "site-2")
    assert crl == workspace / "example_project" / "state" / "crl.pem"
    ca_pem = (first.kits["server1"] / "startup" / "rootCA.pem").read_bytes()
    assert load_revoked_serials(crl, ca_pem) == serials
    for result in (first, second):
        server = load_kit(result.kits["server1"])  # still verifies: local/ is unsigned
        assert server.crl_path.read_bytes() == crl.read_bytes()
        assert load_revoked_serials(server.crl_path, server.tls.ca_pem) == serials
    assert snapshot(first.kits["server1"] / "startup") == before_signed
    # Sites hold it too: they refuse jobs signed by a revoked admin.
    site1 = load_kit(first.kits["site-1"])
    assert site1.crl_path.read_bytes() == crl.read_bytes()
    assert not (first.kits["admin@nvidia.com"] / "local" / "crl.pem").exists()

    revoke(project, workspace, "lead@org2.com")
    lead = load_kit(second.kits["lead@org2.com"]).tls.cert_pem
    revoked = load_revoked_serials(crl, ca_pem)
    assert x509.load_pem_x509_certificate(lead).serial_number in revoked
    assert serials <= revoked

    # A server kit provisioned after the revocation starts with the CRL.
    third = provision(project, workspace)
    assert (third.kits["server1"] / "local" / "crl.pem").read_bytes() == crl.read_bytes()
    assert (third.kits["site-1"] / "local" / "crl.pem").read_bytes() == crl.read_bytes()


def test_revoke_errors(tmp_path: Path) -> None:
    project = tmp_path / "project.yml"
    project.write_text(PROJECT_YML)
    with pytest.raises(NotFoundError, match="has not been provisioned"):
        revoke(project, tmp_path / "ws", "site-1")
    provision(project, tmp_path / "ws")
    with pytest.raises(NotFoundError, match="no certificate was issued to 'nobody'"):
        revoke(project, tmp_path / "ws", "nobody")
    with pytest.raises(ConfigError, match="participant name"):
        revoke(project, tmp_path / "ws", "../site-1")
