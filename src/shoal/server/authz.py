"""Who may do what. Roles come from the admin's certificate, never from a request.

| role          | sees (list_jobs, check_status) | may                                       |
|---------------|--------------------------------|-------------------------------------------|
| project_admin | every job                      | everything (``audit`` is theirs alone)    |
| org_admin     | jobs submitted from their org  | every job command on those jobs;          |
|               |                                | sys_info of the server and of their org's |
|               |                                | sites; shutdown/restart of their sites    |
| lead          | their own jobs                 | submit; on their own jobs every command   |
|               |                                | but delete_job; no sys_info               |
| member        | jobs submitted from their org  | read-only: sys_info of the server and of  |
|               |                                | their org's sites                         |

docs/admin.md shows the same table to operators; keep the two in step.
Seeing a job (:func:`can_see`) and acting on it are separate: a member sees
their org's jobs in the listing but may not open one.
"""

from __future__ import annotations

from shoal.errors import NotAuthorizedError
from shoal.provision import Identity
from shoal.server.store import JobRecord

__all__ = ["ROLES", "authorize", "can_see"]

ROLES = ("project_admin", "org_admin", "lead", "member")

#: Commands anyone logged in may run (their answers are filtered by can_see).
_READ = {"check_status", "list_jobs"}
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
#: Job commands a lead may not run even on their own jobs: deleting a job
#: erases its logs, the record of what the job did on the sites.
_NOT_FOR_LEADS = {"delete_job"}


def can_see(who: Identity, job: JobRecord) -> bool:
    """Whether ``job`` shows in ``who``'s job listing and status."""
    role = who.role or "member"
    if role == "project_admin":
        return True
    if role == "lead":
        return job.submitter == who.name
    # org_admin and member: the jobs of their org; no role sees other orgs' jobs.
    return job.submitter_org == who.org


def authorize(
    who: Identity,
    command: str,
    *,
    job: JobRecord | None = None,
    target_org: str | None = None,
) -> None:
    """Raise NotAuthorizedError unless ``who`` may run ``command``.

    ``target_org`` is the org of the site a site command (``sys_info``,
    ``shutdown``, ``restart``) names; ``None`` means the server.
    """
    role = who.role or "member"
    if role == "project_admin" or command in _READ:
        return
    if command == "submit_job" and role in ("org_admin", "lead"):
        return
    # Job commands follow what the listing shows: an admin acts only on jobs
    # it sees, and a member acts on none.
    if (
        command in _JOB
        and job is not None
        and role in ("org_admin", "lead")
        and can_see(who, job)
        and (role == "org_admin" or command not in _NOT_FOR_LEADS)
    ):
        return
    # The server's, or a site's of their own org.
    if command == "sys_info" and role in ("org_admin", "member") and target_org in (None, who.org):
        return
    if command in ("shutdown", "restart") and role == "org_admin" and target_org == who.org:
        return
    subject = f" job {job.job_id}" if job is not None else ""
    if command in ("sys_info", "shutdown", "restart") and target_org is not None:
        subject = f" on a site of org {target_org}"
    raise NotAuthorizedError(f"{who.name} (role {role}) may not run {command}{subject}")
