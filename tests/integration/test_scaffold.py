"""SCAFFOLD through real daemons from real kits (mutual TLS): c down with the
model and delta c_i up as extras, round by round what the paper's algorithm
gives; and a site's c_i kept across a restart of the site, whose daemon
starts a new worker for the running job that reads it back.

A site daemon starts a job's worker when the server tells it to, at the
job's start and again whenever the site (re)connects while the job runs; a
worker that dies while the site stays connected is reported failed and not
restarted (the job goes on without that site while min_clients holds). So
the worker restart tested here is the one that happens: the site killed
(daemon and worker) and started again.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
from faults.harness import wait_for
from workflows.scaffoldjob import reference, write_scaffold_job

from shoal.arrays import load_arrays
from shoal.client.scaffold import STATE_FILE

pytestmark = pytest.mark.slow


def _c_i(fed, site: str, job_id: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    path = fed.kits[site] / "jobs" / job_id / "state" / STATE_FILE
    return load_arrays(path, mmap=False)["lin.weight"]


def test_scaffold_through_the_daemons(fed_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fed = fed_factory()
    admin = fed.start_all()
    job = write_scaffold_job(tmp_path / "job", num_sites=2, rounds=4)
    job_id = admin.submit_job(job)
    meta = admin.wait_for_job(job_id, timeout=240)
    assert meta["status"] == "FINISHED:COMPLETED", meta
    lines = fed.metrics(job_id)
    got = [line["server"]["dist"] for line in lines]
    np.testing.assert_allclose(got, reference("scaffold", num_sites=2, rounds=4), rtol=1e-4)
    for line in lines:
        assert {m["c_i_round"] for m in line["sites"].values()} == {line["round"] - 1}
    # Each site's c_i in its job folder; the server's c their mean.
    c_i = [_c_i(fed, site, job_id) for site in ("site-1", "site-2")]
    state = load_arrays(fed.run_dir(job_id) / "server_state" / "round_0004.safetensors")
    np.testing.assert_allclose(state["c/lin.weight"], np.mean(c_i, axis=0), atol=1e-5)


def test_a_sites_c_i_survives_its_restart(fed_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fed = fed_factory()
    admin = fed.start_all(heartbeat_s=6)
    gate = fed.gate
    # site-2 stops before training round 3 and is killed there; site-1
    # waits in round 4 until site-2 is back, so that round waits for it.
    (gate / "site-2.hold-r3").touch()
    (gate / "site-1.hold-r4").touch()
    job = write_scaffold_job(tmp_path / "job", num_sites=2, rounds=4, min_clients=1)
    job_id = admin.submit_job(job)

    wait_for(lambda: (gate / "site-2.r3.waiting").exists(), 180, "site-2 to hold in round 3")
    round2 = wait_for(lambda: fed.round_done(job_id, 2), 60, "round 2's metrics")
    old_pid = int(round2["sites"]["site-2"]["pid"])
    before = _c_i(fed, "site-2", job_id)  # round 2's c_i+
    fed.kill("site-2", signal.SIGKILL)
    # The worker follows its daemon (shoal._watchdog) without training round 3.
    wait_for(lambda: not _alive(old_pid), 30, "site-2's worker to exit")
    (gate / "site-2.hold-r3").unlink()
    wait_for(lambda: (gate / "server.r3.aggregated").exists(), 120, "round 3 without site-2")

    fed.start_site("site-2")
    # Its new worker has round 4's task: the server knows the site is back.
    wait_for(lambda: (gate / "site-2.r4.start").exists(), 120, "site-2's new worker")
    (gate / "site-1.hold-r4").unlink()
    meta = admin.wait_for_job(job_id, timeout=240)
    assert meta["status"] == "FINISHED:COMPLETED", meta

    rounds = {m["round"]: m for m in fed.metrics(job_id)}
    assert rounds[3]["missing"] == ["site-2"], rounds[3]
    site2 = rounds[4]["sites"]["site-2"]
    # A new worker process, whose first task found round 2's c_i.
    assert site2["first_task_of_process"] == 1.0
    assert int(site2["pid"]) != old_pid
    assert site2["c_i_round"] == 2.0
    assert rounds[4]["sites"]["site-1"]["c_i_round"] == 3.0
    after = _c_i(fed, "site-2", job_id)
    assert not np.array_equal(after, before)  # round 4 moved on from it
    # No change of c_i was lost (site-2 computed none in round 3): c is still
    # the mean of the sites' c_i.
    c_i = [_c_i(fed, "site-1", job_id), after]
    state = load_arrays(fed.run_dir(job_id) / "server_state" / "round_0004.safetensors")
    np.testing.assert_allclose(state["c/lin.weight"], np.mean(c_i, axis=0), atol=1e-5)
    log = admin.get_log(job_id, "site-2")
    assert "SCAFFOLD: c_i of round 2 read from" in log, log


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers: look at its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
