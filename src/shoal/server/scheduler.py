"""The scheduler: starts submitted jobs on free sites, records how they end.

    scheduler = Scheduler(store=store, registry=registry, runs=runs,
                          secrets=lambda: secret_paths(kit.root, workspace),
                          stopping=stop_event)
    scheduler.recover()     # jobs running when the server stopped resume
    scheduler.start()       # the "scheduler" thread
    scheduler.wake()        # a job was submitted, a site came, a job ended

One pass (:meth:`Scheduler.schedule_once`) looks at every SUBMITTED job: it
is dispatched when the sites it needs are connected and free, abandoned once
it has waited longer than its ``start_timeout_s``. The loop runs a pass when
woken and every half second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from shoal import jobstatus
from shoal._proto import shoal_pb2 as pb
from shoal.server.jobrun import STOPPED, SUSPENDED, JobRun
from shoal.server.runs import Runs
from shoal.server.sessions import SiteRegistry
from shoal.server.store import JobRecord, JobStore, utc_now

__all__ = ["Scheduler"]

# The daemon's logger: these lines ("job ... dispatched to ...") read as they
# did when the scheduler lived in shoal.server.daemon, and the log format
# names the logger.
log = logging.getLogger("shoal.server.daemon")

#: Seconds between passes when nothing wakes the scheduler.
_PASS_EVERY_S = 0.5


class Scheduler:
    """Matches submitted jobs with connected sites; owns the running jobs' ends."""

    def __init__(
        self,
        *,
        store: JobStore,
        registry: SiteRegistry,
        runs: Runs,
        secrets: Callable[[], Sequence[Path]],
        stopping: threading.Event,
        on_progress: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> None:
        self._store = store
        #: Told each workflow progress report (the daemon's metrics count rounds).
        self._on_progress = on_progress
        self._registry = registry
        self._runs = runs
        #: What a workflow process must never reach (asked at each dispatch:
        #: it reads the environment).
        self._secrets = secrets
        #: Set when the server stops: a job ending then stays resumable.
        self._stopping = stopping
        self._wake = threading.Event()
        self._closed = False
        # Jobs recovered at start: their wait for sites counts from then,
        # not from their submission.
        self._resume_since: dict[str, float] = {}

    # -- lifecycle ----------------------------------------------------------

    def recover(self) -> None:
        """Jobs that were dispatched or running when the server stopped go
        back to SUBMITTED; they resume from their last completed round."""
        for rec in self._store.list(status=[jobstatus.DISPATCHED, jobstatus.RUNNING]):
            log.info(
                "job %s (%s) was %s when the server stopped: it will resume from its last "
                "completed round",
                rec.job_id,
                rec.name,
                rec.status,
            )
            self._store.update(rec.job_id, status=jobstatus.SUBMITTED)
            self._resume_since[rec.job_id] = time.monotonic()
        n = len(self._store.list())
        log.info("job store: %d job(s) on record", n)

    def start(self) -> None:
        threading.Thread(target=self._loop, name="scheduler", daemon=True).start()

    def wake(self) -> None:
        """Run a pass now (a job or a site may have become ready)."""
        self._wake.set()

    def close(self) -> None:
        """The store is about to close: record nothing more in it."""
        self._closed = True
        self._wake.set()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(_PASS_EVERY_S)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.schedule_once()
            except Exception:
                log.exception("scheduler pass failed")

    # -- one pass -----------------------------------------------------------

    def schedule_once(self) -> None:
        if self._closed:
            return
        store = self._store
        for rec in store.list(status=jobstatus.SUBMITTED):
            if rec.job_id in self._runs:
                continue
            connected = set(self._registry.connected())
            free = connected - self._runs.busy_sites()
            spec = rec.spec
            min_clients = int(spec.get("min_clients", 1))
            wanted = spec.get("sites") or None
            if wanted:
                chosen = sorted(wanted) if set(wanted) <= free else None
            else:
                chosen = sorted(free) if len(free) >= min_clients else None
            if chosen:
                self._dispatch(rec, chosen)
                continue
            waited = time.monotonic() - self._resume_since.get(
                rec.job_id, _mono_of(rec.submit_time)
            )
            limit = float(spec.get("start_timeout_s", 300))
            if waited > limit:
                need = f"sites {', '.join(wanted)}" if wanted else f"{min_clients} site(s)"
                reason = (
                    f"not enough sites within {limit:.0f} s: needs {need}, "
                    f"connected and free: {', '.join(sorted(free)) or 'none'}"
                )
                log.warning("job %s abandoned: %s", rec.job_id, reason)
                store.update(
                    rec.job_id, status=jobstatus.ABANDONED, end_time=utc_now(), error=reason
                )

    def _dispatch(self, rec: JobRecord, sites: list[str]) -> None:
        store = self._store
        rec = store.update(
            rec.job_id,
            status=jobstatus.DISPATCHED,
            sites=sites,
            start_time=rec.start_time or utc_now(),
            attempts=rec.attempts + 1,
            end_time=None,
            error=None,
        )
        run = JobRun(
            rec,
            sites=sites,
            on_end=self.job_ended,
            on_progress=self.job_progress,
            secrets=self._secrets(),
        )
        self._runs.add(run)
        try:
            run.start()
        except Exception as exc:
            self._runs.pop(rec.job_id)
            store.update(
                rec.job_id,
                status=jobstatus.EXECUTION_EXCEPTION,
                end_time=utc_now(),
                error=f"could not start the workflow process: {exc}",
            )
            return
        store.update(rec.job_id, status=jobstatus.RUNNING)
        event = _start_job(rec)
        for site in sites:
            session = self._registry.get(site)
            if session is not None:
                session.push(event)
        log.info("job %s (%s) dispatched to %s", rec.job_id, rec.name, ", ".join(sites))

    # -- what running jobs report ---------------------------------------------

    def job_ended(self, run: JobRun, status: str, error: str | None) -> None:
        if status == jobstatus.EXECUTION_EXCEPTION and self._stopping.is_set():
            # Failed as the federation stopped around it: judged when it resumes.
            status = STOPPED
        if status in (SUSPENDED, STOPPED):
            # The server is stopping: the job stays RUNNING in the store and
            # recover() resumes it at the next start. Say exactly from where.
            self._runs.pop(run.job_id)
            done = run.checkpointed_round
            if status == SUSPENDED:
                log.info(
                    "job %s (%s): round %s checkpointed, workflow stopped for the server's "
                    "shutdown; the job stays RUNNING and resumes from round %s",
                    run.job_id,
                    run.record.name,
                    done if done is not None else "?",
                    done + 1 if done is not None else "?",
                )
            else:
                log.warning(
                    "job %s (%s): workflow stopped mid-round for the server's shutdown%s; "
                    "the round in progress is lost, the job stays RUNNING and resumes after %s",
                    run.job_id,
                    run.record.name,
                    f" ({error})" if error else "",
                    f"round {done}" if done is not None else "its last checkpoint",
                )
            return
        if self._closed:
            return
        if status != jobstatus.COMPLETED:
            abort = pb.ServerEvent(abort_job=pb.AbortJob(job_id=run.job_id, reason=status))
            for site in run.sites:
                session = self._registry.get(site)
                if session is not None:
                    session.push(abort)
        # Give sites a moment to upload their job logs so a download right
        # after FINISHED has them (each site reports when its upload is done).
        run.wait_sites_done(timeout=10.0)
        rec = self._store.get(run.job_id)
        self._store.update(
            run.job_id,
            status=status,
            end_time=utc_now(),
            error=error,
            current_round=run.progress.get("round", rec.current_round),
        )
        self._runs.pop(run.job_id)
        log.info("job %s (%s): %s%s", run.job_id, rec.name, status, f" ({error})" if error else "")
        self._wake.set()

    def job_progress(self, run: JobRun) -> None:
        if not self._closed and "round" in run.progress:
            self._store.update(run.job_id, current_round=int(run.progress["round"]))
        if self._on_progress is not None:
            self._on_progress(run.progress)

    def site_changed(self, site: str, connected: bool) -> None:
        """A site connected or was lost: its running jobs hear of it."""
        for run in self._runs.with_site(site):
            if connected:
                run.site_back(site)
                session = self._registry.get(site)
                if session is not None and not self._closed:
                    session.push(_start_job(self._store.get(run.job_id)))
            else:
                run.site_failed(site, "disconnected", may_return=True)
        if connected:
            self._wake.set()


def _start_job(rec: JobRecord) -> pb.ServerEvent:
    """The event that has a site start (or restart) its worker for ``rec``."""
    return pb.ServerEvent(
        start_job=pb.StartJob(
            job_id=rec.job_id,
            name=rec.name,
            package_size=rec.package_size,
            package_sha256=rec.package_sha256,
        )
    )


def _mono_of(iso: str) -> float:
    """A wall-clock ISO time as a monotonic reading (for waiting-time maths)."""
    age = time.time() - datetime.fromisoformat(iso).timestamp()
    return time.monotonic() - max(age, 0.0)
