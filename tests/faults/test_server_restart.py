"""The server SIGKILLed mid-job: nothing stored is lost, the job resumes from
its last completed round, sites reconnect by themselves, and the final model
is the one an uninterrupted run gives."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from shoal.arrays import load_arrays

from .harness import expected_final, wait_for, write_job

pytestmark = pytest.mark.slow


def _hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _kill_workflow_process(job_id: str) -> None:
    """The workflow process has its own process group; a machine crash takes it too."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"shoal.server.job_process" in cmd and job_id.encode() in cmd:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def test_server_sigkilled_mid_job_resumes_to_the_same_final_model(fed_factory, tmp_path: Path):
    fed = fed_factory()
    admin = fed.start_all(heartbeat_s=6)

    # A finished job whose files must come through the crash untouched.
    done_id = admin.submit_job(write_job(tmp_path / "small", name="small", num_rounds=1))
    assert admin.wait_for_job(done_id, timeout=120)["status"] == "FINISHED:COMPLETED"
    done_files = _hashes(fed.workspace / "jobs" / done_id)
    done_meta = admin.get_job_meta(done_id)

    rounds = 5
    (fed.gate / "config.json").write_text(json.dumps({"sleep": {"site-1": 0.3, "site-2": 0.3}}))
    job = write_job(tmp_path / "job", num_rounds=rounds, min_clients=2, round_timeout_s=300)
    job_id = admin.submit_job(job)
    wait_for(lambda: fed.round_done(job_id, 2), 120, "round 2")
    wait_for(lambda: (fed.gate / "site-1.r3.start").exists(), 120, "round 3 to start")

    fed.kill("server1", signal.SIGKILL)
    _kill_workflow_process(job_id)
    checkpoint = json.loads((fed.run_dir(job_id) / "checkpoint.json").read_text())
    assert 2 <= checkpoint["round"] < rounds

    # Nobody restarts the sites: they find the server again by themselves.
    log = fed.restart_and_finish(job_id)
    # Resumed, not restarted: the rounds done before the crash were not re-run.
    assert f"resuming job {job_id} after round {checkpoint['round']}" in log
    assert [m["round"] for m in fed.metrics(job_id)] == list(range(1, rounds + 1))

    final = load_arrays(fed.run_dir(job_id) / "models" / "global_final.safetensors", mmap=False)
    want = expected_final(job, rounds, num_sites=2)
    assert final.keys() == want.keys()
    for key in want:
        assert final[key].dtype == want[key].dtype
        np.testing.assert_allclose(final[key], want[key], rtol=1e-6, atol=1e-6)

    # Everything stored before the crash is still there, byte for byte.
    assert _hashes(fed.workspace / "jobs" / done_id) == done_files
    after = admin.get_job_meta(done_id)
    assert {k: after[k] for k in ("status", "name", "submit_time")} == {
        k: done_meta[k] for k in ("status", "name", "submit_time")
    }
