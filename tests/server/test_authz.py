"""Who may do what: roles from the certificate, job commands against the submitter."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.errors import NotAuthorizedError
from shoal.provision import Identity
from shoal.server.authz import ROLES, authorize
from shoal.server.store import JobRecord

JOB_COMMANDS = [
    "get_job_meta",
    "abort_job",
    "clone_job",
    "delete_job",
    "download_job",
    "show_stats",
    "show_errors",
    "get_log",
]
READ_COMMANDS = ["check_status", "sys_info", "list_jobs"]


def admin(name: str, org: str, role: str | None) -> Identity:
    return Identity(name=name, org=org, type="admin", role=role, serial=1)


def job(submitter: str, org: str) -> JobRecord:
    return JobRecord(
        job_id="j1",
        name="hello",
        status="SUBMITTED",
        submit_time="2024-01-01T00:00:00+00:00",
        start_time=None,
        end_time=None,
        submitter=submitter,
        submitter_org=org,
        spec={},
        sites=[],
        current_round=None,
        num_rounds=None,
        error=None,
        attempts=0,
        package_sha256="",
        package_size=0,
        folder=Path("/nonexistent"),
    )


LEAD = admin("lead@a", "a", "lead")
OTHER_LEAD = admin("lead2@a", "a", "lead")
ORG_ADMIN = admin("oa@a", "a", "org_admin")
FOREIGN_ORG_ADMIN = admin("oa@b", "b", "org_admin")
MEMBER = admin("m@a", "a", "member")
NO_ROLE = admin("n@a", "a", None)
PROJECT_ADMIN = admin("pa@z", "z", "project_admin")
LEADS_JOB = job("lead@a", "a")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("command", READ_COMMANDS)
def test_everyone_may_read(role: str, command: str) -> None:
    authorize(admin("x@a", "a", role), command)


@pytest.mark.parametrize("command", [*JOB_COMMANDS, "submit_job", "shutdown", "restart"])
def test_project_admin_may_do_everything(command: str) -> None:
    authorize(PROJECT_ADMIN, command, job=LEADS_JOB, target_org="other")
    authorize(PROJECT_ADMIN, command)


@pytest.mark.parametrize("who", [LEAD, ORG_ADMIN, PROJECT_ADMIN])
def test_who_may_submit(who: Identity) -> None:
    authorize(who, "submit_job")


@pytest.mark.parametrize("who", [MEMBER, NO_ROLE])
def test_members_may_not_submit(who: Identity) -> None:
    with pytest.raises(NotAuthorizedError, match="may not run submit_job"):
        authorize(who, "submit_job")


@pytest.mark.parametrize("command", JOB_COMMANDS)
def test_job_commands(command: str) -> None:
    authorize(LEAD, command, job=LEADS_JOB)  # their own job
    authorize(ORG_ADMIN, command, job=LEADS_JOB)  # a job from their org
    for who in (OTHER_LEAD, FOREIGN_ORG_ADMIN, MEMBER, NO_ROLE):
        with pytest.raises(NotAuthorizedError, match=f"may not run {command} job j1"):
            authorize(who, command, job=LEADS_JOB)
    # Without the job at hand nothing but project_admin passes.
    with pytest.raises(NotAuthorizedError):
        authorize(LEAD, command)


@pytest.mark.parametrize("command", ["shutdown", "restart"])
def test_shutdown_and_restart(command: str) -> None:
    authorize(ORG_ADMIN, command, target_org="a")
    for who, org in ((ORG_ADMIN, "b"), (ORG_ADMIN, None), (LEAD, "a"), (MEMBER, "a")):
        with pytest.raises(NotAuthorizedError):
            authorize(who, command, target_org=org)


def test_unknown_commands_need_project_admin() -> None:
    authorize(PROJECT_ADMIN, "anything")
    with pytest.raises(NotAuthorizedError, match=r"n@a \(role member\)"):
        authorize(NO_ROLE, "anything")
