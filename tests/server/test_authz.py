"""Who may do what: roles from the certificate, job commands against the submitter."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.errors import NotAuthorizedError
from shoal.provision import Identity
from shoal.server.authz import ROLES, authorize, can_see
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
READ_COMMANDS = ["check_status", "list_jobs"]


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
    if command == "delete_job":  # a lead may not erase even their own job's logs
        with pytest.raises(NotAuthorizedError, match="may not run delete_job job j1"):
            authorize(LEAD, command, job=LEADS_JOB)
    else:
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


def test_who_sees_a_job() -> None:
    other_orgs_job = job("lead@b", "b")
    assert all(can_see(w, LEADS_JOB) for w in (PROJECT_ADMIN, LEAD, ORG_ADMIN, MEMBER, NO_ROLE))
    assert not can_see(OTHER_LEAD, LEADS_JOB)  # a lead sees only their own jobs
    assert not can_see(FOREIGN_ORG_ADMIN, LEADS_JOB)
    assert can_see(FOREIGN_ORG_ADMIN, other_orgs_job)
    assert can_see(PROJECT_ADMIN, other_orgs_job)
    for who in (LEAD, ORG_ADMIN, MEMBER, NO_ROLE):
        assert not can_see(who, other_orgs_job)


def test_sys_info() -> None:
    """The server's for every role but lead; a site's only within the admin's org."""
    for who in (PROJECT_ADMIN, ORG_ADMIN, MEMBER, NO_ROLE):
        authorize(who, "sys_info")  # the server
        authorize(who, "sys_info", target_org="a")
    authorize(PROJECT_ADMIN, "sys_info", target_org="b")
    for who in (ORG_ADMIN, MEMBER):
        with pytest.raises(NotAuthorizedError, match="may not run sys_info on a site of org b"):
            authorize(who, "sys_info", target_org="b")
    for org in (None, "a"):
        with pytest.raises(NotAuthorizedError, match=r"lead@a \(role lead\) may not run sys_info"):
            authorize(LEAD, "sys_info", target_org=org)
