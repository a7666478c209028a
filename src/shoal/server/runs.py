"""The jobs running now, by id: what the scheduler fills and the services read.

    runs = Runs()
    runs.add(run)
    runs.get("job-1")       # the JobRun, or None when it is not running
    runs.busy_sites()       # sites taken by some running job

Thread-safe: the scheduler thread adds and removes runs while the Admin
service's threads and the Fleet loop look them up.
"""

from __future__ import annotations

import threading

from shoal.server.jobrun import JobRun

__all__ = ["Runs"]


class Runs:
    """The running jobs of one server."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._by_id: dict[str, JobRun] = {}

    def add(self, run: JobRun) -> None:
        with self._lock:
            self._by_id[run.job_id] = run

    def pop(self, job_id: str) -> JobRun | None:
        with self._lock:
            return self._by_id.pop(job_id, None)

    def get(self, job_id: str) -> JobRun | None:
        """The running job ``job_id``, if it is running."""
        with self._lock:
            return self._by_id.get(job_id)

    def __contains__(self, job_id: object) -> bool:
        with self._lock:
            return job_id in self._by_id

    def all(self) -> list[JobRun]:
        with self._lock:
            return list(self._by_id.values())

    def with_site(self, site: str) -> list[JobRun]:
        """The running jobs ``site`` takes part in."""
        with self._lock:
            return [r for r in self._by_id.values() if site in r.sites]

    def busy_sites(self) -> set[str]:
        """Every site some running job takes part in."""
        with self._lock:
            return {s for r in self._by_id.values() for s in r.sites}
