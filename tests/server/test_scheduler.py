"""The scheduler without a daemon: a real job store and site registry, no
workflow process (the paths tested here never start one)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal import jobstatus
from shoal.server.jobrun import JobRun
from shoal.server.runs import Runs
from shoal.server.scheduler import Scheduler
from shoal.server.sessions import SiteRegistry, SiteSession
from shoal.server.store import JobRecord, JobStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    s = JobStore(tmp_path / "ws")
    yield s
    s.close()


def add_job(store: JobStore, spec: dict[str, Any]) -> JobRecord:
    staging = store.staging_folder()
    (staging / "job.zip").write_bytes(b"zip")
    (staging / "job").mkdir()
    return store.create(
        name="hello",
        spec=spec,
        staged_folder=staging,
        submitter="admin@a",
        submitter_org="a",
        package_sha256="0" * 64,
        package_size=3,
        num_rounds=1,
    )


def scheduler(
    store: JobStore, registry: SiteRegistry, runs: Runs | None = None
) -> tuple[Scheduler, threading.Event]:
    stopping = threading.Event()
    made = Scheduler(
        store=store,
        registry=registry,
        runs=runs or Runs(),
        secrets=lambda: [],
        stopping=stopping,
    )
    return made, stopping


def connect(registry: SiteRegistry, name: str) -> SiteSession:
    session = SiteSession(name=name, org="a", peer="p")
    registry.open(session)
    return session


def test_a_job_whose_sites_never_come_is_abandoned_with_the_reason(store: JobStore) -> None:
    registry = SiteRegistry(heartbeat_timeout_s=30)
    connect(registry, "site-1")
    few = add_job(store, {"min_clients": 2, "start_timeout_s": 0})
    named = add_job(store, {"sites": ["site-1", "site-9"], "start_timeout_s": 0})
    patient = add_job(store, {"min_clients": 2})
    scheduler(store, registry)[0].schedule_once()
    assert store.get(few.job_id).status == jobstatus.ABANDONED
    assert store.get(few.job_id).error == (
        "not enough sites within 0 s: needs 2 site(s), connected and free: site-1"
    )
    assert store.get(named.job_id).error == (
        "not enough sites within 0 s: needs sites site-1, site-9, connected and free: site-1"
    )
    assert store.get(patient.job_id).status == jobstatus.SUBMITTED


def test_jobs_running_when_the_server_stopped_are_submitted_again(store: JobStore) -> None:
    running = add_job(store, {})
    store.update(running.job_id, status=jobstatus.RUNNING)
    done = add_job(store, {})
    store.update(done.job_id, status=jobstatus.COMPLETED)
    scheduler(store, SiteRegistry(heartbeat_timeout_s=30))[0].recover()
    assert store.get(running.job_id).status == jobstatus.SUBMITTED
    assert store.get(done.job_id).status == jobstatus.COMPLETED


def test_a_job_ending_while_the_server_stops_stays_resumable(store: JobStore) -> None:
    rec = store.update(add_job(store, {}).job_id, status=jobstatus.RUNNING, sites=["site-1"])
    runs = Runs()
    run = JobRun(rec, sites=["site-1"], on_end=lambda *a: None)
    runs.add(run)
    made, stopping = scheduler(store, SiteRegistry(heartbeat_timeout_s=30), runs)
    stopping.set()
    made.job_ended(run, jobstatus.EXECUTION_EXCEPTION, "killed")
    # Still RUNNING in the store: recover() resumes it at the next start.
    assert store.get(rec.job_id).status == jobstatus.RUNNING
    assert runs.get(rec.job_id) is None


def test_a_site_back_for_its_running_job_is_told_to_start_it_again(store: JobStore) -> None:
    rec = store.update(add_job(store, {}).job_id, status=jobstatus.RUNNING, sites=["site-1"])
    runs = Runs()
    runs.add(JobRun(rec, sites=["site-1"], on_end=lambda *a: None))
    registry = SiteRegistry(heartbeat_timeout_s=30)
    made, _ = scheduler(store, registry, runs)
    registry.on_change(made.site_changed)
    session = connect(registry, "site-1")
    event = session.events.get_nowait()
    assert event.start_job.job_id == rec.job_id
    assert event.start_job.package_sha256 == "0" * 64
    assert runs.busy_sites() == {"site-1"}
