"""Issue 21, item 3: a job runs within the resource caps of the site's policy.

A real federation from real kits, one site. Job code that allocates past
the memory cap, spins past the CPU cap or outstays the wall-time cap is
stopped, the submitter is told which cap in the job's error, and the same
site daemon then runs the next job to completion. The GPU cap overrides
what job.yml asks for.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults.harness import Fed

from shoal.admin import AdminSession
from shoal.provision.templates import SITE_POLICY_YML

pytestmark = pytest.mark.slow

MODEL = """
import numpy as np

def initial_weights():
    return {"w": np.zeros(4, np.float32)}
"""

#: ``{body}`` runs once the first task is in: what the job does to the site.
TRAIN = """
import json, os, time
import numpy as np
import shoal.client as fl

fl.init()
print("SEEN", json.dumps({{"cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}}), flush=True)
while fl.is_running():
    task = fl.receive()
{body}
    fl.send(fl.FLModel(params=task.params, num_examples=1))
"""

GREEDY = "    hog = np.ones(2**28, np.uint8) + 1  # 256 MiB, twice: past a 256 MiB cap"
SPIN = "    while True:\n        pass"
SLEEP = "    time.sleep(120)"
FINE = "    pass"


def _job(folder: Path, name: str, body: str, *, env: str = "") -> Path:
    app = folder / "app"
    app.mkdir(parents=True)
    (app / "model.py").write_text(MODEL)
    (app / "train.py").write_text(TRAIN.format(body=body))
    (folder / "job.yml").write_text(
        f"name: {name}\nmin_clients: 1\nsites: [site-1]\n"
        "workflow: {name: fedavg, num_rounds: 1, round_timeout_s: 120}\n"
        f"client: {{script: train.py{env}}}\n"
        "server: {initial_weights: 'model:initial_weights'}\n"
    )
    return folder


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    fed = Fed(tmp_path_factory.mktemp("caps"), sites=("site-1",))
    fed.start_all(sites=("site-1",))
    yield fed
    fed.close()


@pytest.fixture
def admin(fed: Fed) -> Iterator[AdminSession]:
    yield fed.admin()
    (fed.kits["site-1"] / "local" / "policy.yml").write_text(SITE_POLICY_YML)


def _caps(fed: Fed, caps: str) -> None:
    (fed.kits["site-1"] / "local" / "policy.yml").write_text(f"resources: {{{caps}}}\n")


def _run(fed: Fed, admin: AdminSession, folder: Path) -> tuple[str, str, str]:
    job_id = admin.submit_job(folder)
    meta = admin.wait_for_job(job_id, timeout=180)
    log = (fed.kits["site-1"] / "jobs" / job_id / "log.txt").read_text(errors="replace")
    return meta.status, str(meta.error or ""), log


def _ended(fed: Fed) -> dict[str, dict]:
    path = fed.kits["site-1"] / "audit" / "audit.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {e["job_id"]: e for e in events if e["event"] == "job.ended"}


def test_a_job_past_its_memory_cap_is_stopped_and_the_site_runs_the_next(
    fed: Fed, admin: AdminSession, tmp_path: Path
) -> None:
    _caps(fed, "memory_mb: 256, gpus: []")
    status, error, log = _run(fed, admin, _job(tmp_path / "greedy", "greedy", GREEDY))
    assert status != "FINISHED:COMPLETED"
    assert "exceeded the site's memory cap of 256 MiB" in error, error
    assert "MemoryError" in log and "caps: memory 256 MiB" in log
    assert fed.procs["site-1"].poll() is None  # the daemon survived
    # The next job, under the same cap, runs to completion on the same daemon;
    # it sees no GPU whatever its job.yml asks for.
    env = ", env: {CUDA_VISIBLE_DEVICES: '0,1'}"
    status, error, log = _run(fed, admin, _job(tmp_path / "fine", "fine", FINE, env=env))
    assert status == "FINISHED:COMPLETED", error
    assert 'SEEN {"cuda": ""}' in log


def test_a_job_past_its_cpu_cap_is_stopped(fed: Fed, admin: AdminSession, tmp_path: Path) -> None:
    _caps(fed, "cpu_seconds: 2")
    status, error, _ = _run(fed, admin, _job(tmp_path / "spin", "spin", SPIN))
    assert status != "FINISHED:COMPLETED"
    assert "exceeded the site's CPU cap of 2 s (SIGXCPU)" in error, error


def test_a_job_past_its_wall_time_cap_is_stopped(
    fed: Fed, admin: AdminSession, tmp_path: Path
) -> None:
    _caps(fed, "wall_time_s: 4")
    job = _job(tmp_path / "sleepy", "sleepy", SLEEP)
    job_id = admin.submit_job(job)
    meta = admin.wait_for_job(job_id, timeout=60)  # not the 120 s it would sleep
    assert "stopped: exceeded the site's wall-time cap of 4 s" in str(meta.error), meta
    assert _ended(fed)[job_id]["detail"] == "stopped: exceeded the site's wall-time cap of 4 s"
    assert fed.procs["site-1"].poll() is None
