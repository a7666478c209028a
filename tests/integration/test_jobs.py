"""Jobs in a real POC federation: lifecycle, abort, failures, restart, admin commands.

Every test runs real server and site daemons from real startup kits (see
conftest.py). Jobs are small numpy jobs written into ``tmp_path``; conditions
are polled with generous deadlines and nothing asserts on timing.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shoal import jobstatus, poc
from shoal.admin.session import AdminSession
from shoal.errors import ConfigError, NotFoundError

from .conftest import HELLO_NUMPY, Federation

pytestmark = [
    pytest.mark.slow,
]

#: Generous: two shared cores, several engineers' tests at once.
JOB_TIMEOUT = 180.0

SLOW_TRAIN = '''\
"""hello-numpy's training, slowed down so that a test can act mid-job."""
import sys
import time

import numpy as np

import shoal.client as fl

fl.init()
while fl.is_running():
    task = fl.receive()
    time.sleep({sleep})
    if {fail_round} and task.current_round == {fail_round}:
        raise ValueError("exploded on purpose in round %d" % task.current_round)
    params = {{k: np.asarray(v) + 0.0 for k, v in task.params.items()}}
    print("round", task.current_round, "done", flush=True)
    fl.send(fl.FLModel(params=params, metrics={{"loss": 1.0}}, num_examples=8))
'''


def numpy_job(
    root: Path,
    *,
    name: str = "numpy-job",
    rounds: int = 2,
    sleep: float = 0.0,
    fail_round: int = 0,
    min_clients: int = 2,
) -> Path:
    """A copy of examples/hello-numpy with its own rounds, and a slow or failing train.py."""
    job = root / name
    shutil.copytree(HELLO_NUMPY, job, ignore=shutil.ignore_patterns("__pycache__"))
    text = (job / "job.yml").read_text()
    text = text.replace("name: hello-numpy", f"name: {name}")
    text = text.replace("num_rounds: 5", f"num_rounds: {rounds}")
    text = text.replace("min_clients: 1", f"min_clients: {min_clients}")
    (job / "job.yml").write_text(text)
    if sleep or fail_round:
        (job / "app" / "train.py").write_text(SLOW_TRAIN.format(sleep=sleep, fail_round=fail_round))
    return job


def wait_for(cond: Callable[[], Any], what: str, timeout: float = JOB_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def watch_states(s: AdminSession, job_id: str, timeout: float = JOB_TIMEOUT) -> list[str]:
    """Every distinct status seen while polling until the job is FINISHED:*."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = s.get_job_meta(job_id)["status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        if jobstatus.is_finished(status):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not finished after {timeout:.0f} s; states {seen}")


def job_processes(job_id: str) -> dict[int, str]:
    """pid -> command line of every live process whose command line names ``job_id``.

    The workflow process runs ``-m shoal.server.job_process --job-id ID``; a
    site worker runs ``python .../jobs/ID/job/app/train.py``.
    """
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z":
            continue  # exited, waiting to be reaped
        cmd = raw.replace(b"\0", b" ").decode(errors="replace")
        if job_id in cmd and int(entry.name) != os.getpid():
            found[int(entry.name)] = cmd
    return found


def log_text(folder: Path, name: str) -> str:
    return (folder / "logs" / f"{name}.log").read_text(errors="replace")


# -- a job from submit to download --------------------------------------------


def test_job_runs_to_completion_with_admin_commands(federation: Federation, tmp_path: Path) -> None:
    s = federation.admin()
    job = numpy_job(tmp_path, name="numpy-lifecycle", rounds=3, sleep=0.3)
    job_id = s.submit_job(job)

    stats_seen: list[dict[str, Any]] = []

    def running_stats() -> bool:
        st = s.show_stats(job_id)
        if st["status"] == jobstatus.RUNNING and st["sites"]:
            stats_seen.append(st)
            return True
        return jobstatus.is_finished(st["status"])

    wait_for(running_stats, "show_stats of the running job")
    states = [jobstatus.SUBMITTED, *watch_states(s, job_id)]
    assert states[-1] == jobstatus.COMPLETED, states
    assert jobstatus.RUNNING in states or stats_seen, states
    # show_stats during the run: the job's sites and where they are.
    assert stats_seen, "never saw the job RUNNING"
    assert set(stats_seen[0]["sites"]) == {"site-1", "site-2"}
    assert stats_seen[0]["num_rounds"] == 3

    # After the end: per-round metrics, and the meta lists the models.
    stats = s.show_stats(job_id)
    assert [m["round"] for m in stats["metrics"]] == [1, 2, 3]
    assert all(m["num_examples"] == 16 for m in stats["metrics"])
    meta = s.get_job_meta(job_id)
    assert meta["current_round"] == 3
    assert "models/global_final.safetensors" in meta["results"]
    # A unique prefix of the id works like the id.
    assert s.get_job_meta(job_id[:8])["job_id"] == job_id

    # get_log for the server and a site.
    server_log = s.get_log(job_id, "server")
    assert "round 3/3 done" in server_log
    site_log = s.get_log(job_id, "site-1")
    assert "round 3 done" in site_log
    # The worker logs each task's size and transfer time into the job's site log.
    assert site_log.count("Received from server. getTask: train size:") == 3, site_log
    assert site_log.count("Sent result to server: round") == 3, site_log
    assert len(s.get_log(job_id, "server", tail=2).splitlines()) == 2
    with pytest.raises(NotFoundError, match="available"):
        s.get_log(job_id, "site-9")

    # download_job: models, metrics, logs, the definition.
    out = s.download_job(job_id, tmp_path / "dl")
    assert (out / "run" / "models" / "global_final.safetensors").is_file()
    assert (out / "run" / "metrics.jsonl").read_text().count("\n") == 3
    assert {"server.log", "site-1.log", "site-2.log"} <= {p.name for p in (out / "logs").iterdir()}
    assert (out / "job" / "job.yml").is_file()

    # clone_job: a new id, same definition, runs to completion too.
    clone_id = s.clone_job(job_id)
    assert clone_id != job_id
    assert s.get_job_meta(clone_id)["spec"] == meta["spec"]
    assert s.wait_for_job(clone_id, timeout=JOB_TIMEOUT)["status"] == jobstatus.COMPLETED

    # list_jobs with filters.
    other = s.submit_job(numpy_job(tmp_path, name="other-job", rounds=1))
    assert s.wait_for_job(other, timeout=JOB_TIMEOUT)["status"] == jobstatus.COMPLETED
    all_ids = [j["job_id"] for j in s.list_jobs()]
    assert all_ids == [job_id, clone_id, other]  # submission order
    assert [j["job_id"] for j in s.list_jobs(name="numpy-life")] == [job_id, clone_id]
    assert [j["job_id"] for j in s.list_jobs(name="other")] == [other]
    assert [j["job_id"] for j in s.list_jobs(status="FINISHED")] == all_ids
    assert [j["job_id"] for j in s.list_jobs(status=jobstatus.COMPLETED)] == all_ids
    assert s.list_jobs(status=jobstatus.RUNNING) == []
    assert [j["job_id"] for j in s.list_jobs(limit=2)] == [clone_id, other]

    # delete_job of a finished job removes its row and its folder.
    folder = federation.layout.server_kit / "jobs" / clone_id
    assert folder.is_dir()
    s.delete_job(clone_id)
    assert [j["job_id"] for j in s.list_jobs()] == [job_id, other]
    assert not folder.exists()
    with pytest.raises(NotFoundError):
        s.get_job_meta(clone_id)


# -- abort -----------------------------------------------------------------------


def test_abort_mid_job_leaves_no_process(federation: Federation, tmp_path: Path) -> None:
    s = federation.admin()
    job_id = s.submit_job(numpy_job(tmp_path, name="slow", rounds=500, sleep=0.5))

    def both_workers_and_workflow() -> dict[int, str] | None:
        procs = job_processes(job_id)
        workflow = [c for c in procs.values() if "shoal.server.job_process" in c]
        workers = [c for c in procs.values() if "train.py" in c]
        return procs if len(workflow) == 1 and len(workers) == 2 else None

    procs = wait_for(both_workers_and_workflow, "the workflow process and two site workers")
    wait_for(lambda: (s.get_job_meta(job_id)["current_round"] or 0) >= 1, "round 1")
    assert s.get_job_meta(job_id)["status"] == jobstatus.RUNNING

    # A running job cannot be deleted.
    with pytest.raises(ConfigError, match="abort it before deleting"):
        s.delete_job(job_id)

    s.abort_job(job_id)
    meta = s.wait_for_job(job_id, timeout=60)
    assert meta["status"] == jobstatus.ABORTED
    assert "aborted by admin@nvidia.com" in (meta["error"] or "")
    left = wait_for(lambda: not job_processes(job_id) or None, "the job's processes to end", 30)
    assert left is True
    for pid in procs:
        assert not Path(f"/proc/{pid}").exists() or pid not in job_processes(job_id)
    # Aborting a finished job is refused with a reason.
    with pytest.raises(ConfigError, match="already finished"):
        s.abort_job(job_id)

    # The daemons carry on: every site still connected, and a new job completes.
    assert all(site["connected"] for site in s.check_status()["sites"])
    for name in ("server1", "site-1", "site-2"):
        os.kill(federation.pid(name), 0)
    second = s.submit_job(numpy_job(tmp_path, name="after-abort", rounds=2))
    assert s.wait_for_job(second, timeout=JOB_TIMEOUT)["status"] == jobstatus.COMPLETED
    # And the aborted job can now be deleted.
    s.delete_job(job_id)


# -- a training script that raises -----------------------------------------------


def test_raising_training_script_fails_the_job(federation: Federation, tmp_path: Path) -> None:
    s = federation.admin()
    job_id = s.submit_job(numpy_job(tmp_path, name="raises", rounds=3, fail_round=2))
    meta = s.wait_for_job(job_id, timeout=JOB_TIMEOUT)
    assert meta["status"] == jobstatus.EXECUTION_EXCEPTION, meta
    assert meta["error"]
    assert not job_processes(job_id) or wait_for(
        lambda: not job_processes(job_id), "the job's processes to end", 30
    )

    out = s.download_job(job_id, tmp_path / "dl")
    for site in ("site-1", "site-2"):
        text = log_text(out, site)
        assert "Traceback" in text, text
        assert "ValueError: exploded on purpose in round 2" in text, text
    errors = s.show_errors(job_id)
    assert errors.get("job"), errors
    for site in ("site-1", "site-2"):
        assert any("exploded on purpose" in line for line in errors.get(site, [])), errors
    # Round 1 completed before the failure and is kept.
    assert (out / "run" / "models" / "global_round_0001.safetensors").is_file()

    # The daemons carry on.
    second = s.submit_job(numpy_job(tmp_path, name="after-fail", rounds=1))
    assert s.wait_for_job(second, timeout=JOB_TIMEOUT)["status"] == jobstatus.COMPLETED


# -- server restart ----------------------------------------------------------------


def _restart_server(federation: Federation) -> None:
    layout = federation.layout
    pid = federation.pid("server1")
    os.killpg(pid, signal.SIGTERM)
    wait_for(lambda: not poc._alive(pid), "the server to exit", 30)
    ready = layout.server_kit / "server_ready.json"
    ready.unlink(missing_ok=True)
    # The same kit, ports and workspace; the pid file lets the fixture stop it.
    env = {"SHOAL_MNIST_PATH": os.environ.get("SHOAL_MNIST_PATH", "")}
    poc._spawn(
        layout,
        "server1",
        ["server", "--kit", str(layout.server_kit), "--host", "127.0.0.1"],
        env,
        sys.executable,
    )
    wait_for(ready.exists, "the restarted server to listen", 60)


def test_server_restart_keeps_jobs(federation: Federation, tmp_path: Path) -> None:
    s = federation.admin()
    done = s.submit_job(numpy_job(tmp_path, name="before-restart", rounds=2))
    assert s.wait_for_job(done, timeout=JOB_TIMEOUT)["status"] == jobstatus.COMPLETED
    failed = s.submit_job(numpy_job(tmp_path, name="failing", rounds=2, fail_round=1))
    assert s.wait_for_job(failed, timeout=JOB_TIMEOUT)["status"] == jobstatus.EXECUTION_EXCEPTION
    before = s.list_jobs()
    s.close()

    _restart_server(federation)

    s2 = federation.admin()
    after = s2.list_jobs()
    keys = ("job_id", "name", "status", "submit_time", "end_time", "current_round", "error")
    assert [{k: j[k] for k in keys} for j in after] == [{k: j[k] for k in keys} for j in before]
    out = s2.download_job(done, tmp_path / "dl")
    assert (out / "run" / "models" / "global_final.safetensors").is_file()
    assert "round 2/2 done" in log_text(out, "server")
    assert s2.show_stats(done)["metrics"][-1]["round"] == 2

    # The sites reconnect by themselves and the restarted server runs new jobs.
    wait_for(
        lambda: all(site["connected"] for site in s2.check_status()["sites"]),
        "the sites to reconnect",
        60,
    )
    again = s2.submit_job(numpy_job(tmp_path, name="after-restart", rounds=1))
    assert s2.wait_for_job(again, timeout=JOB_TIMEOUT)["status"] == jobstatus.COMPLETED


def test_server_restart_mid_job_resumes_it(federation: Federation, tmp_path: Path) -> None:
    s = federation.admin()
    job_id = s.submit_job(numpy_job(tmp_path, name="resumed", rounds=5, sleep=1.0))
    wait_for(lambda: (s.get_job_meta(job_id)["current_round"] or 0) >= 2, "round 2")
    s.close()

    _restart_server(federation)

    s2 = federation.admin()
    listed = {j["job_id"]: j for j in s2.list_jobs()}
    assert job_id in listed
    assert not jobstatus.is_finished(listed[job_id]["status"]), listed[job_id]
    meta = s2.wait_for_job(job_id, timeout=JOB_TIMEOUT)
    assert meta["status"] == jobstatus.COMPLETED, meta
    assert meta["attempts"] == 2
    # Every round ran and was recorded once: the run resumed, it did not restart.
    rounds = [m["round"] for m in s2.show_stats(job_id)["metrics"]]
    assert rounds == [1, 2, 3, 4, 5]
    assert "resuming job" in s2.get_log(job_id, "server")
    wait_for(lambda: not job_processes(job_id) or None, "the job's processes to end", 30)
