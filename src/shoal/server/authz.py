"""Who may do what. Roles come from the admin's certificate, never from a request.

| role          | may                                                                  |
|---------------|----------------------------------------------------------------------|
| project_admin | everything                                                           |
| org_admin     | status/info; every job command on jobs submitted from their org;     |
|               | shutdown/restart of sites of their org                               |
| lead          | status/info; submit jobs; every job command on their own jobs         |
| member        | status/info; list jobs (read-only)                                   |
"""

from __future__ import annotations

from shoal.errors import NotAuthorizedError
from shoal.provision import Identity
from shoal.server.store import JobRecord

__all__ = ["ROLES", "authorize"]

ROLES = ("project_admin", "org_admin", "lead", "member")

#: Commands anyone logged in may run.
_READ = {"check_status", "sys_info", "list_jobs"}
#: Commands that act on one job (checked against the job's submitter).
_JOB = {
    "get_job_meta",
    "abort_job",
    "clone_job",
    "delete_job",
    "download_job",
    "show_stats",
    "show_errors",
    "get_log",
}


def authorize(
    who: Identity,
    command: str,
    *,
    job: JobRecord | None = None,
    target_org: str | None = None,
) -> None:
    """Raise NotAuthorizedError unless ``who`` may run ``command``."""
    role = who.role or "member"
    if role == "project_admin" or command in _READ:
        return
    if command == "submit_job" and role in ("org_admin", "lead"):
        return
    if command in _JOB and job is not None:
        if role == "org_admin" and job.submitter_org == who.org:
            return
        if role == "lead" and job.submitter == who.name:
            return
    if command in ("shutdown", "restart") and role == "org_admin" and target_org == who.org:
        return
    subject = f" job {job.job_id}" if job is not None else ""
    raise NotAuthorizedError(f"{who.name} (role {role}) may not run {command}{subject}")
