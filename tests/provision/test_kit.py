"""load_kit / verify_kit: signed kits load anywhere; any change is named."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from shoal.errors import ConfigError, KitError
from shoal.provision import Kit, ProvisionResult, identity_from_cert, load_kit, verify_kit


@pytest.fixture
def kit_copy(provisioned: ProvisionResult, tmp_path: Path) -> Path:
    """A private copy of site-1's kit that a test may damage."""
    target = tmp_path / "elsewhere" / "site-1"
    shutil.copytree(provisioned.kits["site-1"], target)
    return target


def test_every_kit_loads(provisioned: ProvisionResult) -> None:
    for name, root in provisioned.kits.items():
        kit = load_kit(root)
        assert isinstance(kit, Kit)
        assert (kit.name, kit.project, kit.root) == (name, "example_project", root)
        assert kit.startup == root / "startup" and kit.local == root / "local"
        assert identity_from_cert(kit.tls.cert_pem).name == name
        assert kit.tls.ca_pem == (root / "startup" / "rootCA.pem").read_bytes()
        assert b"PRIVATE KEY" in kit.tls.key_pem
        assert "PRIVATE" not in repr(kit.tls)


def test_kit_fields(provisioned: ProvisionResult) -> None:
    server = load_kit(provisioned.kits["server1"], expected_type="server")
    assert (server.type, server.org, server.role) == ("server", "nvidia", None)
    assert server.config["admin_port"] == 8003
    client = load_kit(provisioned.kits["site-2"], expected_type="client")
    assert (client.type, client.org) == ("client", "org2")
    assert client.config["server"] == {"name": "server1", "host": "server1", "fed_learn_port": 8002}
    admin = load_kit(provisioned.kits["lead@org2.com"], expected_type="admin")
    assert (admin.type, admin.role) == ("admin", "lead")
    with pytest.raises(TypeError):
        admin.config["role"] = "project_admin"  # type: ignore[index]


def test_startup_folder_is_accepted(provisioned: ProvisionResult) -> None:
    kit = load_kit(provisioned.kits["site-1"] / "startup")
    assert kit.root == provisioned.kits["site-1"]


def test_wrong_type_refused(provisioned: ProvisionResult) -> None:
    with pytest.raises(KitError, match="is a client kit, not a server kit"):
        load_kit(provisioned.kits["site-1"], expected_type="server")
    with pytest.raises(ConfigError):
        load_kit(provisioned.kits["site-1"], expected_type="robot")


def test_not_a_kit(tmp_path: Path) -> None:
    with pytest.raises(KitError, match="not a startup kit"):
        load_kit(tmp_path)
    (tmp_path / "startup").mkdir()
    with pytest.raises(KitError, match="needs exactly one of"):
        load_kit(tmp_path)


def test_copied_kit_loads(kit_copy: Path) -> None:
    verify_kit(kit_copy)
    assert load_kit(kit_copy).root == kit_copy


@pytest.mark.parametrize(
    "fname", ["client.crt", "client.key", "fed_client.json", "start.sh", "rootCA.pem"]
)
def test_one_changed_byte_is_named(kit_copy: Path, fname: str) -> None:
    path = kit_copy / "startup" / fname
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    for check in (verify_kit, load_kit):
        with pytest.raises(KitError, match=f"{fname}: changed since provisioning"):
            check(kit_copy)


def test_config_checked_without_signature(kit_copy: Path) -> None:
    path = kit_copy / "startup" / "fed_client.json"
    doc = json.loads(path.read_text())
    del doc["server"]["host"]
    path.write_text(json.dumps(doc))
    with pytest.raises(KitError, match=r"fed_client.json: server.host: missing"):
        load_kit(kit_copy, verify=False)
    doc["server"]["host"] = "server1"
    doc["server"]["fed_learn_port"] = 0
    path.write_text(json.dumps(doc))
    with pytest.raises(KitError, match=r"server.fed_learn_port: port 0 out of range"):
        load_kit(kit_copy, verify=False)


def test_missing_file_is_named(kit_copy: Path) -> None:
    (kit_copy / "startup" / "stop_fl.sh").unlink()
    with pytest.raises(KitError, match="stop_fl.sh: missing"):
        verify_kit(kit_copy)


def test_extra_file_is_named(kit_copy: Path) -> None:
    (kit_copy / "startup" / "evil.sh").write_text("rm -rf /\n")
    with pytest.raises(KitError, match="evil.sh: not part of the signed kit"):
        load_kit(kit_copy)


def test_signature_tampering(kit_copy: Path) -> None:
    sig = kit_copy / "startup" / "signature.json"
    doc = json.loads(sig.read_text())
    doc["name"] = "site-2"
    sig.write_text(json.dumps(doc))
    with pytest.raises(KitError, match="signature.json: signature does not verify"):
        verify_kit(kit_copy)
    sig.unlink()
    with pytest.raises(KitError, match="signature.json: missing"):
        verify_kit(kit_copy)


def test_local_is_not_signed(kit_copy: Path) -> None:
    (kit_copy / "local" / "log_config.json").write_text("{}")
    (kit_copy / "local" / "extra.txt").write_text("mine")
    load_kit(kit_copy)


def test_swapped_cert_from_other_kit(kit_copy: Path, provisioned: ProvisionResult) -> None:
    """A valid certificate of another participant does not pass as this one."""
    other = provisioned.kits["site-2"] / "startup"
    for fname in ("client.crt", "client.key"):
        shutil.copy(other / fname, kit_copy / "startup" / fname)
    with pytest.raises(KitError, match="certificate is for"):
        load_kit(kit_copy, verify=False)


def test_readable_key_warns(kit_copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    (kit_copy / "startup" / "client.key").chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="shoal.provision.kit"):
        load_kit(kit_copy)
    assert "readable by others" in caplog.text
