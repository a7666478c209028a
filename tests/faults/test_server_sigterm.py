"""The server SIGTERMed mid-round, as a container runtime stops it: it refuses
new sites and jobs, lets the round in progress finish and checkpoints it within
its grace period, says so in its log (no failure for a job that will resume),
and the job resumes after the restart to the model an uninterrupted run gives."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from shoal.arrays import load_arrays
from shoal.errors import UnavailableError

from .harness import expected_final, wait_for, write_job

pytestmark = pytest.mark.slow


def test_sigterm_mid_round_checkpoints_it_refuses_newcomers_and_resumes(
    fed_factory, tmp_path: Path
) -> None:
    fed = fed_factory(sites=("site-1", "site-2", "site-3"))
    admin = fed.start_all(sites=("site-1", "site-2"), heartbeat_s=6)
    rounds = 5
    # Each site takes ~2 s a round: SIGTERM lands while round 3 trains.
    (fed.gate / "config.json").write_text(json.dumps({"sleep": {"site-1": 2.0, "site-2": 2.0}}))
    job = write_job(tmp_path / "job", num_rounds=rounds, min_clients=2, sites=["site-1", "site-2"])
    job_id = admin.submit_job(job)
    wait_for(lambda: fed.round_done(job_id, 2), 120, "round 2")
    wait_for(lambda: (fed.gate / "site-1.r3.start").exists(), 120, "round 3 to start")

    server = fed.procs["server1"]
    signalled = time.monotonic()
    server.send_signal(signal.SIGTERM)  # the daemon only, as `docker stop` does
    # While it drains: a site that was not connected is refused, and so is a job.
    fed.start_site("site-3")
    with pytest.raises(UnavailableError, match="stopping"):
        fed.admin().submit_job(write_job(tmp_path / "late", name="late"))
    server.wait(timeout=60)
    took = time.monotonic() - signalled
    assert server.returncode == 0, fed.tail("server1")
    assert took < 45, f"the round should finish well inside the grace period ({took:.1f} s)"

    # Round 3 finished and is checkpointed; round 4 was never offered.
    checkpoint = json.loads((fed.run_dir(job_id) / "checkpoint.json").read_text())
    assert checkpoint["round"] == 3
    assert not (fed.gate / "site-1.r4.start").exists()
    assert [m["round"] for m in fed.metrics(job_id)] == [1, 2, 3]

    daemon_log = (fed.server_kit / "log.txt").read_text()
    assert "refused a session of site-3" in daemon_log
    assert "site site-3 (org nvidia) connected" not in daemon_log
    assert (
        f"job {job_id} (fault-numpy): round 3 checkpointed, workflow stopped for the server's "
        "shutdown; the job stays RUNNING and resumes from round 4"
    ) in daemon_log
    assert "EXECUTION_EXCEPTION" not in daemon_log and "Traceback" not in daemon_log
    job_log = (fed.workspace / "jobs" / job_id / "logs" / "server.log").read_text()
    assert "suspended after round 3 (checkpointed)" in job_log and "Traceback" not in job_log

    job_log = fed.restart_and_finish(job_id)
    assert f"resuming job {job_id} after round 3" in job_log
    assert [m["round"] for m in fed.metrics(job_id)] == list(range(1, rounds + 1))
    final = load_arrays(fed.run_dir(job_id) / "models" / "global_final.safetensors", mmap=False)
    want = expected_final(job, rounds, num_sites=2)
    for key in want:
        np.testing.assert_allclose(final[key], want[key], rtol=1e-6, atol=1e-6)


def test_a_round_longer_than_the_grace_period_is_stopped_and_said_so(
    fed_factory, tmp_path: Path
) -> None:
    fed = fed_factory()
    admin = fed.start_all(heartbeat_s=6, extra_args=["--stop-grace-s", "1"])
    (fed.gate / "config.json").write_text(json.dumps({"sleep": {"site-1": 8.0, "site-2": 8.0}}))
    job = write_job(tmp_path / "job", num_rounds=3, min_clients=2)
    job_id = admin.submit_job(job)
    wait_for(lambda: (fed.gate / "site-1.r1.start").exists(), 120, "round 1 to start")
    server = fed.procs["server1"]
    signalled = time.monotonic()
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=60)
    assert time.monotonic() - signalled < 20
    daemon_log = (fed.server_kit / "log.txt").read_text()
    assert "round in progress not finished within the 1 s grace period" in daemon_log
    assert (
        f"job {job_id} (fault-numpy): workflow stopped mid-round for the server's shutdown; "
        "the round in progress is lost, the job stays RUNNING and resumes after its last "
        "checkpoint"
    ) in daemon_log
    assert "EXECUTION_EXCEPTION" not in daemon_log

    (fed.gate / "config.json").write_text(json.dumps({"sleep": {}}))
    fed.start_server(heartbeat_s=6)
    admin = fed.admin()
    assert admin.wait_for_job(job_id, timeout=300)["status"] == "FINISHED:COMPLETED"
