"""A fake admin session for tests of what wraps the admin API (console, dashboard)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shoal.admin.results import (
    AuditEvents,
    FederationStatus,
    JobErrors,
    JobMeta,
    JobStats,
    JobSummary,
    SysInfo,
    jobs_from_json,
)

JOB = {
    "job_id": "c8973f05-8787-41c5-8568-ecc15c7683b2",
    "name": "hello-tf2",
    "status": "RUNNING",
    "submit_time": "2024-05-23T09:47:04.488652+00:00",
    "run_duration_s": 11.978134,
    "sites": ["site-1", "site-2"],
    "current_round": 1,
    "num_rounds": 5,
}


class FakeSession:
    """Records every call; ``answers``/``raises`` are keyed by method name."""

    user = "admin@nvidia.com"
    role = "project_admin"
    server_name = "server1"
    server_address = "server1:8003"
    certificate_warnings: list[str] = []  # noqa: RUF012 - a fake's plain attribute
    session_id = "ebc6125d-0a56-4688-9b08-355fe9e4d61a"

    def __init__(self, **raises: BaseException) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.raises = raises
        self.closed = False
        self.answers: dict[str, Any] = {
            "check_status": {
                "server": {"name": "server1", "status": "started", "uptime_s": 5.0},
                "sites": [{"name": "site-1", "connected": True, "last_heartbeat_s_ago": 0.5}],
            },
            "sys_info": {"target": "server", "platform": "Linux", "python": "3.11.7"},
            "submit_job": "new-job-1",
            "list_jobs": [JOB],
            "get_job_meta": {**JOB, "spec": {}, "errors": [], "results": []},
            "clone_job": "new-job-2",
            "download_job": Path("/kit/transfer/c8973f05"),
            "show_stats": {
                "job_id": JOB["job_id"],
                "status": "RUNNING",
                "current_round": 1,
                "num_rounds": 5,
                "sites": {},
                "metrics": [],
            },
            "show_errors": {"server": []},
            "get_log": "round 1 done\n",
            "wait_for_job": {**JOB, "status": "FINISHED:COMPLETED"},
            "audit": {
                "path": "/ws/audit/audit.jsonl",
                "head": "2:" + "ab" * 32,
                "events": [
                    {
                        "seq": 2,
                        "time": "2026-01-01T00:00:00Z",
                        "event": "admin.command",
                        "by": "server1",
                        "prev": "00",
                        "caller": "admin@nvidia.com",
                    }
                ],
            },
        }

    def _call(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((name, args, kwargs))
        if name in self.raises:
            raise self.raises[name]
        return self.answers.get(name)

    def check_status(self) -> FederationStatus:
        return FederationStatus.from_json(self._call("check_status"))

    def sys_info(self, target: str = "server") -> SysInfo:
        return SysInfo.from_json(self._call("sys_info", target))

    def submit_job(self, path: str | Path) -> str:
        return self._call("submit_job", path)

    def list_jobs(
        self, *, name: str | None = None, status: str | None = None, limit: int | None = None
    ) -> list[JobSummary]:
        return jobs_from_json(self._call("list_jobs", name=name, status=status, limit=limit))

    def get_job_meta(self, job_id: str) -> JobMeta:
        return JobMeta.from_json(self._call("get_job_meta", job_id))

    def abort_job(self, job_id: str) -> None:
        return self._call("abort_job", job_id)

    def clone_job(self, job_id: str) -> str:
        return self._call("clone_job", job_id)

    def delete_job(self, job_id: str) -> None:
        return self._call("delete_job", job_id)

    def download_job(self, job_id: str, dest: str | Path | None = None) -> Path:
        return self._call("download_job", job_id, dest)

    def show_stats(self, job_id: str) -> JobStats:
        return JobStats.from_json(self._call("show_stats", job_id))

    def show_errors(self, job_id: str) -> JobErrors:
        return JobErrors.from_json(self._call("show_errors", job_id))

    def get_log(self, job_id: str, target: str = "server", tail: int | None = None) -> str:
        return self._call("get_log", job_id, target, tail)

    def shutdown(self, target: str = "server") -> None:
        return self._call("shutdown", target)

    def restart(self, target: str = "server") -> None:
        return self._call("restart", target)

    def audit(self, **kwargs: Any) -> AuditEvents:
        return AuditEvents.from_json(self._call("audit", **kwargs))

    def wait_for_job(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll_s: float = 0.5,
        on_poll: Any = None,
    ) -> JobMeta:
        return JobMeta.from_json(self._call("wait_for_job", job_id, timeout=timeout))

    def close(self) -> None:
        self.closed = True
