"""Who may do what: admin roles, expired and revoked certificates, against a
real server. Identity and role come from the certificate only."""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from faults.harness import wait_for, write_job  # noqa: I001

from shoal._proto import shoal_pb2 as pb
from shoal._proto import shoal_pb2_grpc as pb_grpc
from shoal.errors import NotAuthorizedError
from shoal.provision.state import load_ca
from shoal.transport import TLSConfig

from .conftest import admin_stub, fleet_stub, kit_tls, raw_channel

pytestmark = pytest.mark.slow

ADMINS = (
    ("admin@nvidia.com", "nvidia", "project_admin"),
    ("member@nvidia.com", "nvidia", "member"),
    ("lead@nvidia.com", "nvidia", "lead"),
    ("boss@other.org", "other", "org_admin"),
)


def _code(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def _cert(ca, name: str, ou: str, *, days_ago: int, title: str | None = None) -> TLSConfig:  # type: ignore[no-untyped-def]
    """A certificate signed by the project CA, valid from ``days_ago`` for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [
        x509.NameAttribute(NameOID.COMMON_NAME, name),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nvidia"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
    ]
    if title:
        attrs.append(x509.NameAttribute(NameOID.TITLE, title))
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days_ago)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=1))
        .sign(ca.key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives import serialization as ser

    return TLSConfig(
        ca_pem=ca.cert_pem,
        cert_pem=cert.public_bytes(ser.Encoding.PEM),
        key_pem=key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()),
    )


def test_admin_commands_beyond_role_are_refused(fed_factory, tmp_path: Path):
    fed = fed_factory(admins=ADMINS)
    fed.start_server()
    fed.start_site("site-1")
    admin = fed.admin()
    fed.wait_connected(admin, ["site-1"])
    job_id = admin.submit_job(write_job(tmp_path / "job", num_rounds=1))
    assert admin.wait_for_job(job_id, timeout=120)["status"] == "FINISHED:COMPLETED"

    member, lead, boss = (fed.admin(n) for n in ("member@nvidia.com", "lead@nvidia.com",
                                                  "boss@other.org"))  # fmt: skip
    refused = [
        lambda: member.submit_job(tmp_path / "job"),
        lambda: member.get_job_meta(job_id),
        lambda: member.delete_job(job_id),
        lambda: member.shutdown("server"),
        lambda: lead.delete_job(job_id),  # not the lead's own job
        lambda: lead.download_job(job_id, tmp_path / "dl"),
        lambda: lead.shutdown("server"),
        lambda: boss.delete_job(job_id),  # a job of another org
        lambda: boss.shutdown("site-1"),  # a site of another org
        lambda: boss.shutdown("server"),
    ]
    for call in refused:
        with pytest.raises(NotAuthorizedError, match="may not run"):
            call()
    # Reading is allowed to everyone; nothing above changed anything.
    assert [j["job_id"] for j in member.list_jobs()] == [job_id]
    assert admin.get_job_meta(job_id)["status"] == "FINISHED:COMPLETED"
    fed.wait_connected(admin, ["site-1"])

    # A site's key on the admin port, an admin's key on the site port.
    site_on_admin = admin_stub(fed, kit_tls(fed.kits["site-1"]))
    assert _code(lambda: site_on_admin.Call(pb.AdminRequest(command="check_status"))) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    admin_on_fleet = pb_grpc.FleetStub(
        raw_channel(kit_tls(fed.kits["admin@nvidia.com"]), fed.fed_port)
    )
    assert _code(lambda: next(admin_on_fleet.Connect(pb.Hello(site="admin@nvidia.com")))) == (
        grpc.StatusCode.PERMISSION_DENIED
    )


def test_expired_certificate_fails_the_handshake(fed_factory):
    fed = fed_factory()
    fed.start_server()
    ca = load_ca(fed.state_dir)
    expired_admin = _cert(ca, "admin@nvidia.com", "admin", days_ago=10, title="project_admin")
    fresh_admin = _cert(ca, "admin@nvidia.com", "admin", days_ago=0, title="project_admin")
    expired_site = _cert(ca, "site-1", "client", days_ago=10)

    call = pb.AdminRequest(command="check_status")
    assert admin_stub(fed, fresh_admin).Call(call, timeout=30).ok  # the CA itself is fine
    assert _code(lambda: admin_stub(fed, expired_admin).Call(call, timeout=30)) == (
        grpc.StatusCode.UNAVAILABLE
    )
    fleet = pb_grpc.FleetStub(raw_channel(expired_site, fed.fed_port))
    assert _code(lambda: fleet.Beat(pb.Heartbeat(session_id="x"), timeout=30)) == (
        grpc.StatusCode.UNAVAILABLE
    )


def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_revoked_site_is_refused_and_other_sites_work(fed_factory, tmp_path: Path):
    fed = fed_factory()
    admin = fed.start_all(heartbeat_s=6)
    before = {n: _tree_hash(fed.kits[n] / "startup") for n in ("server1", "site-2", "site-1")}

    subprocess.run(
        [sys.executable, "-m", "shoal", "provision", "--revoke", "site-1",
         "-p", str(fed.project_file), "-w", str(fed.kits_root)],
        check=True, capture_output=True,
    )  # fmt: skip
    assert (fed.server_kit / "local" / "crl.pem").exists()
    # No kit was re-issued.
    assert {n: _tree_hash(fed.kits[n] / "startup") for n in before} == before

    beat = pb.Heartbeat(session_id="no-such-session")
    with pytest.raises(grpc.RpcError) as info:
        fleet_stub(fed, "site-1").Beat(beat, timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in str(info.value.details())
    # site-2 gets past authentication (its session id is bogus, so NOT_FOUND).
    with pytest.raises(grpc.RpcError) as info:
        fleet_stub(fed, "site-2").Beat(beat, timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    # site-1's daemon is dropped at its next call; a job runs on site-2 alone.
    wait_for(lambda: not any(s["name"] == "site-1" and s["connected"]
                             for s in admin.check_status()["sites"]), 60,
             "site-1 to be dropped")  # fmt: skip
    job_id = admin.submit_job(write_job(tmp_path / "job", num_rounds=1))
    meta = admin.wait_for_job(job_id, timeout=120)
    assert meta["status"] == "FINISHED:COMPLETED", meta
    assert list(fed.round_done(job_id, 1)["sites"]) == ["site-2"]
    assert not any(s["name"] == "site-1" and s["connected"]
                   for s in admin.check_status()["sites"])  # fmt: skip
