"""Finding 10: a site's uploaded job log is append-only.

Before the fix a site could overwrite the server's copy of its log of any past
job at any time through Fleet.PutBlob, erasing the evidence of what the job
did there. A real server and two real sites run a job on site-1; then site-1's
own key uploads rewritten and truncated logs (refused, the stored copy
unchanged, the refusal logged with its reason) and an appended one (kept), and
site-2, not a site of the job, may not upload a log for it at all.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from faults.harness import Fed, wait_for, write_job  # noqa: I001

from shoal.transport import PayloadHeader, frames_from_file

from .conftest import fleet_stub

pytestmark = pytest.mark.slow


def _upload(fed: Fed, site: str, job_id: str, data: bytes, tmp: Path) -> None:
    path = tmp / f"upload-{site}.log"
    path.write_bytes(data)
    header = PayloadHeader(kind="blob", job_id=job_id, meta={"name": "log"})
    fleet_stub(fed, site).PutBlob(frames_from_file(header, path), timeout=30)


def _refused(fed: Fed, site: str, job_id: str, data: bytes, tmp: Path) -> str:
    with pytest.raises(grpc.RpcError) as info:
        _upload(fed, site, job_id, data, tmp)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value
    return str(info.value.details())


def test_a_site_cannot_rewrite_its_uploaded_log(fed_factory, tmp_path: Path) -> None:
    fed = fed_factory()
    admin = fed.start_all()
    job_id = admin.submit_job(write_job(tmp_path / "job", num_rounds=1, sites=["site-1"]))
    assert admin.wait_for_job(job_id, timeout=120)["status"] == "FINISHED:COMPLETED"
    stored = fed.workspace / "jobs" / job_id / "logs" / "site-1.log"
    wait_for(stored.exists, 30, "site-1's log upload")
    original = stored.read_bytes()
    assert original

    attempts = {
        "rewritten": b"nothing to see here\n",
        "truncated": original[: len(original) // 2],
        "emptied": b"",
        "one byte changed, then more": original[:-1] + b"X" + b"extra line\n",
    }
    for what, data in attempts.items():
        reason = _refused(fed, "site-1", job_id, data, tmp_path)
        assert "append-only" in reason and "stored copy is kept" in reason, (what, reason)
        assert stored.read_bytes() == original, what
    assert admin.get_log(job_id, "site-1") == original.decode()

    # A site that was not part of the job uploads nothing for it.
    reason = _refused(fed, "site-2", job_id, b"site-2 was here\n", tmp_path)
    assert f"site-2 is not a site of job {job_id}" in reason
    assert not (stored.parent / "site-2.log").exists()

    # Appending is what a resumed job's log does: kept.
    _upload(fed, "site-1", job_id, original + b"appended later\n", tmp_path)
    assert stored.read_bytes() == original + b"appended later\n"
    assert sorted(p.name for p in stored.parent.iterdir()) == ["server.log", "site-1.log"]

    log = (fed.workspace / "log.txt").read_text()
    assert f"log upload from site-1 refused: site-1.log of job {job_id} is append-only" in log
