"""The audit trails of a real POC federation (server + two sites, mTLS, real
daemons): admin commands with the caller's certificate identity, job states,
the code each site accepted with its hash; a tiny rotation size so both
trails rotate; ``shoal audit verify`` passes, then names an edited or
deleted line."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from shoal import jobstatus
from shoal._proto import shoal_pb2 as pb
from shoal._proto import shoal_pb2_grpc as pb_grpc
from shoal.audit import read_events, trail_files
from shoal.errors import NotFoundError
from shoal.provision import load_kit
from shoal.transport import open_channel

from .conftest import HELLO_NUMPY, Federation


def _verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoal", "audit", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_federation_trails_record_commands_jobs_and_code_and_detect_tampering(
    federation_factory: Callable[..., Federation], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small enough that both the server's and each site's trail rotate.
    monkeypatch.setenv("SHOAL_AUDIT_MAX_BYTES", "4096")
    fed = federation_factory(2)
    s = fed.admin()
    job_id = s.submit_job(HELLO_NUMPY)
    meta = s.wait_for_job(job_id, timeout=240)
    assert meta.status == jobstatus.COMPLETED
    s.list_jobs()
    with pytest.raises(NotFoundError):
        s.get_job_meta("no-such-job")
    site_tls = load_kit(fed.layout.site_kits["site-2"]).tls
    with (
        open_channel(fed.layout.admin_address, site_tls, server_name="server1") as ch,
        pytest.raises(grpc.RpcError),
    ):
        pb_grpc.AdminStub(ch).Call(pb.AdminRequest(command="audit"), timeout=30)
    answer = s.audit(limit=1000, verify=True)
    assert answer.verify is not None and answer.verify["ok"], answer.verify

    commands = [e for e in answer.events if e["event"] == "admin.command"]
    submit = next(e for e in commands if e["command"] == "submit_job")
    assert (submit["caller"], submit["org"], submit["role"]) == (
        s.user,
        "nvidia",
        "project_admin",
    )
    assert submit["outcome"] == "ok" and submit["job_id"] == job_id
    refused = next(e for e in commands if e["args"].get("job_id") == "no-such-job")
    assert refused["outcome"].startswith("NotFoundError: ")
    [intruder] = [e for e in answer.events if e["event"] == "peer.refused"]
    assert "site-2 is a client" in intruder["reason"] and intruder["peer"].startswith("ipv4:")
    states = [e["status"] for e in answer.events if e.get("job_id") == job_id and "status" in e]
    assert states == [
        jobstatus.SUBMITTED,
        jobstatus.DISPATCHED,
        jobstatus.RUNNING,
        jobstatus.COMPLETED,
    ]
    code_sha256 = next(e for e in answer.events if e["event"] == "job.status")["code_sha256"]
    connected = {e["site"]: e for e in answer.events if e["event"] == "site.connected"}
    assert set(connected) == {"site-1", "site-2"}
    assert all(e["site_audit_head"] for e in connected.values())
    about_site = s.audit(site="site-1", limit=1000).events
    assert {e["event"] for e in about_site} == {"site.connected", "job.status"}
    assert all(e.get("site") == "site-1" or "site-1" in e["sites"] for e in about_site)

    server_trail = fed.layout.server_kit / "audit" / "audit.jsonl"
    site_trails = {n: kit / "audit" / "audit.jsonl" for n, kit in fed.layout.site_kits.items()}
    fed.close()  # the trails are complete once the daemons have stopped

    for name, trail in site_trails.items():
        accepted = read_events(trail, match={"event": "job.accepted", "job_id": job_id})
        assert [e["code_sha256"] for e in accepted] == [code_sha256], name
        assert accepted[0]["submitter"] == s.user
        assert read_events(trail, match={"event": "config.loaded", "name": "filters"})
        assert _verify(trail).returncode == 0
    assert len(trail_files(server_trail)) >= 2, "the server's trail never rotated"
    done = _verify(server_trail)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK:" in done.stdout and "audit.jsonl.1" in done.stdout

    # An edited line: the next one no longer chains to it.
    first = trail_files(server_trail)[0]
    original = first.read_bytes()
    lines = original.splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"nvidia"', b'"evil"', 1).replace(b'"server1"', b'"server2"', 1)
    assert lines[2] != original.splitlines(keepends=True)[2]
    first.write_bytes(b"".join(lines))
    done = _verify(server_trail)
    assert done.returncode == 1
    assert f"FAILED: line 4 of {first.name}: chain broken" in done.stdout
    # A deleted line.
    lines = original.splitlines(keepends=True)
    del lines[4]
    first.write_bytes(b"".join(lines))
    done = _verify(server_trail)
    assert done.returncode == 1
    assert f"FAILED: line 5 of {first.name}" in done.stdout
