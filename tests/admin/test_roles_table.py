"""The console's role table (``COMMANDS[...].roles``, what ``? cmd`` shows) says
what the server's ``authz`` enforces, command by command and role by role."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.admin.commands import COMMANDS
from shoal.errors import NotAuthorizedError
from shoal.provision import Identity
from shoal.server.authz import ROLES, authorize
from shoal.server.store import JobRecord

#: Console command -> the server command it runs.
SERVER_COMMAND = {"cat_log": "get_log", "wait": "get_job_meta", "wait_job": "get_job_meta"}


def _own_job(who: Identity) -> JobRecord:
    return JobRecord(
        job_id="j1", name="hello", status="SUBMITTED", submit_time="2024-01-01T00:00:00+00:00",
        start_time=None, end_time=None, submitter=who.name, submitter_org=who.org, spec={},
        sites=[], current_round=None, num_rounds=None, error=None, attempts=0,
        package_sha256="", package_size=0, folder=Path("/nonexistent"),
    )  # fmt: skip


def _allowed(who: Identity, command: str) -> bool:
    """Whether ``who`` may run ``command`` on the most it could: its own job, its org's site."""
    try:
        authorize(who, command, job=_own_job(who), target_org=who.org)
    except NotAuthorizedError:
        return False
    return True


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_console_roles_match_the_server(name: str, role: str) -> None:
    who = Identity(name=f"{role}@a", org="a", type="admin", role=role, serial=1)
    assert (role in COMMANDS[name].roles) == _allowed(who, SERVER_COMMAND.get(name, name))
