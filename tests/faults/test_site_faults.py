"""A site SIGKILLed mid-round: the job goes on with the others while
min_clients holds, and the site takes part again once it is back."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from .harness import wait_for, write_job

pytestmark = pytest.mark.slow


def test_site_sigkilled_mid_round_job_continues_and_site_rejoins(fed_factory, tmp_path: Path):
    fed = fed_factory()
    admin = fed.start_all(heartbeat_s=6)
    # site-2 trains slowly, so killing it once it started round 2 is mid-round.
    (fed.gate / "config.json").write_text(json.dumps({"sleep": {"site-2": 3}}))
    # The round does not wait for site-2 to come back (the job's rejoin_grace_s).
    job = write_job(
        tmp_path / "job", num_rounds=4, min_clients=1, round_timeout_s=120, rejoin_grace_s=0
    )
    job_id = admin.submit_job(job)

    wait_for(lambda: (fed.gate / "site-2.r2.start").exists(), 120, "site-2 to start round 2")
    (fed.gate / "hold").touch()  # pause the workflow after round 2 aggregates
    fed.kill("site-2", signal.SIGKILL)

    wait_for(lambda: (fed.gate / "server.r2.aggregated").exists(), 120,
             "round 2 to complete without site-2")  # fmt: skip
    assert not (fed.gate / "site-2.r2.send").exists()
    assert admin.get_job_meta(job_id)["status"] == "RUNNING"

    # site-2 comes back while the workflow holds after round 2.
    (fed.gate / "config.json").write_text(json.dumps({"sleep": {}}))
    fed.start_site("site-2")
    fed.wait_connected(admin, ["site-2"])
    (fed.gate / "hold").unlink()

    meta = admin.wait_for_job(job_id, timeout=240)
    assert meta["status"] == "FINISHED:COMPLETED", meta
    rounds = {m["round"]: m for m in fed.metrics(job_id)}
    assert sorted(rounds) == [1, 2, 3, 4]
    assert sorted(rounds[1]["sites"]) == ["site-1", "site-2"]
    assert rounds[2]["missing"] == ["site-2"] and sorted(rounds[2]["sites"]) == ["site-1"]
    # Back after its restart: it answers the later rounds again. Round 3 was
    # offered while the workflow held in round 2's evaluate hook (a round is
    # evaluated once the next one is out), so site-2 may have missed it.
    assert "site-1" in rounds[3]["sites"], rounds
    assert sorted(rounds[4]["sites"]) == ["site-1", "site-2"], rounds
    log = (fed.workspace / "jobs" / job_id / "logs" / "server.log").read_text()
    assert "a site that leaves a round is waited for 0 s" in log


def test_site_restarted_mid_round_answers_that_round(fed_factory, tmp_path: Path):
    """The daemon of the last site still training restarts mid-round: the round
    stays open for it (the job process's rejoin grace), its new worker takes
    the round's task again and its answer is counted, not thrown away as late."""
    fed = fed_factory()
    admin = fed.start_all(heartbeat_s=6)
    (fed.gate / "config.json").write_text(json.dumps({"sleep": {"site-2": 3}}))
    job = write_job(tmp_path / "job", num_rounds=3, min_clients=1, round_timeout_s=120)
    job_id = admin.submit_job(job)

    wait_for(lambda: (fed.gate / "site-2.r2.start").exists(), 120, "site-2 to start round 2")
    fed.kill("site-2", signal.SIGKILL)  # site-1 has answered round 2 by now, or soon will
    (fed.gate / "site-2.r2.start").unlink()
    fed.start_site("site-2")

    wait_for(lambda: (fed.gate / "site-2.r2.start").exists(), 60,
             "site-2's new worker to take round 2's task")  # fmt: skip
    meta = admin.wait_for_job(job_id, timeout=240)
    assert meta["status"] == "FINISHED:COMPLETED", meta
    rounds = {m["round"]: m for m in fed.metrics(job_id)}
    assert sorted(rounds) == [1, 2, 3]
    for k in (1, 2, 3):
        assert sorted(rounds[k]["sites"]) == ["site-1", "site-2"], rounds[k]
