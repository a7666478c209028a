from __future__ import annotations

import inspect
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from shoal.admin import commands, console
from shoal.admin.commands import COMMANDS, AdminSessionLike, CommandUsageError, run_command
from shoal.errors import JobValidationError, NotAuthorizedError, NotFoundError, TransportError

from .fakes import JOB, FakeSession


def make_console(
    session: FakeSession, script: str = "", confirm: bool = True
) -> tuple[console.AdminConsole, io.StringIO]:
    out = io.StringIO()
    c = console.AdminConsole(
        session, stdin=io.StringIO(script), stdout=out, confirm=lambda q: confirm
    )
    return c, out


# --- the command table ------------------------------------------------------------

DISPATCH = [
    ("check_status", [], ("check_status", (), {})),
    ("check_status", ["client"], ("check_status", (), {})),
    ("sys_info", [], ("sys_info", ("server",), {})),
    ("sys_info", ["site-1"], ("sys_info", ("site-1",), {})),
    ("submit_job", ["hello-tf2"], ("submit_job", ("hello-tf2",), {})),
    ("list_jobs", [], ("list_jobs", (), {"name": None, "status": None, "limit": None})),
    (
        "list_jobs",
        ["-n", "hello", "-s", "RUNNING", "-m", "3"],
        ("list_jobs", (), {"name": "hello", "status": "RUNNING", "limit": 3}),
    ),
    ("list_jobs", ["-d", "j1"], ("get_job_meta", ("j1",), {})),
    ("abort_job", ["j1"], ("abort_job", ("j1",), {})),
    ("clone_job", ["j1"], ("clone_job", ("j1",), {})),
    ("delete_job", ["j1"], ("delete_job", ("j1",), {})),
    ("download_job", ["j1"], ("download_job", ("j1", None), {})),
    ("download_job", ["j1", "/tmp/out"], ("download_job", ("j1", "/tmp/out"), {})),
    ("show_stats", ["j1"], ("show_stats", ("j1",), {})),
    ("show_errors", ["j1"], ("show_errors", ("j1",), {})),
    ("cat_log", ["j1"], ("get_log", ("j1", "server", None), {})),
    ("cat_log", ["j1", "site-2", "--tail", "20"], ("get_log", ("j1", "site-2", 20), {})),
    ("shutdown", [], ("shutdown", ("server",), {})),
    ("shutdown", ["all"], ("shutdown", ("all",), {})),
    ("restart", ["site-1"], ("restart", ("site-1",), {})),
    ("wait", ["j1"], ("wait_for_job", ("j1",), {"timeout": None})),
    (
        "audit",
        [],
        ("audit", (), {"since": None, "site": None, "event": None, "limit": 50, "verify": False}),
    ),
    (
        "audit",
        ["--since", "2026-01-01", "--site", "site-1", "-n", "5", "--verify"],
        (
            "audit",
            (),
            {"since": "2026-01-01", "site": "site-1", "event": None, "limit": 5, "verify": True},
        ),
    ),
    ("wait", ["j1", "--timeout", "60"], ("wait_for_job", ("j1",), {"timeout": 60.0})),
    ("wait_job", ["j1"], ("wait_for_job", ("j1",), {"timeout": None})),
]


@pytest.mark.parametrize(("name", "args", "call"), DISPATCH)
def test_each_command_calls_its_session_method_with_parsed_args(
    name: str, args: list[str], call: tuple[str, tuple[Any, ...], dict[str, Any]]
) -> None:
    session = FakeSession()
    outcome = run_command(session, name, args)
    assert session.calls == [call]
    assert outcome.ok
    json.dumps(outcome.data, default=str)  # --json can always print it


def test_every_command_is_dispatch_tested_and_documented() -> None:
    assert {name for name, _, _ in DISPATCH} == set(COMMANDS)
    for c in COMMANDS.values():
        assert c.usage.split()[0] == c.name
        assert c.summary and c.summary.endswith(".")
        assert set(c.roles) <= set(commands.ROLES)
        assert "project_admin" in c.roles


def test_roles_follow_the_documented_policy() -> None:
    member = {n for n, c in COMMANDS.items() if "member" in c.roles}
    lead = {n for n, c in COMMANDS.items() if "lead" in c.roles}
    assert member == {"list_jobs", "check_status", "sys_info"}
    assert {"submit_job", "list_jobs", "abort_job", "clone_job", "download_job"} <= lead
    assert "delete_job" not in lead and "shutdown" not in lead
    assert "org_admin" in COMMANDS["shutdown"].roles


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("abort_job", []),
        ("abort_job", ["a", "b"]),
        ("list_jobs", ["-m", "many"]),
        ("list_jobs", ["-m", "0"]),
        ("check_status", ["nowhere"]),
        ("check_status", ["server", "site-1"]),
        ("cat_log", ["j1", "--tail"]),
        ("list_jobs", ["-h"]),
    ],
)
def test_bad_arguments_raise_a_usage_error_without_calling_the_server(
    name: str, args: list[str]
) -> None:
    session = FakeSession()
    with pytest.raises(CommandUsageError) as info:
        run_command(session, name, args)
    assert info.value.usage == COMMANDS[name].usage
    assert session.calls == [] or session.calls[0][0] == "check_status"


def test_check_status_of_named_sites() -> None:
    session = FakeSession()
    out = run_command(session, "check_status", ["client", "site-1"])
    assert [s["name"] for s in out.data["sites"]] == ["site-1"]
    with pytest.raises(NotFoundError):
        run_command(session, "check_status", ["client", "site-9"])


def test_wait_fails_unless_completed() -> None:
    session = FakeSession()
    session.answers["wait_for_job"] = {**JOB, "status": "FINISHED:EXECUTION_EXCEPTION"}
    outcome = run_command(session, "wait", ["j1"])
    assert not outcome.ok
    assert "FINISHED:EXECUTION_EXCEPTION" in outcome.text


def test_wait_timeout_reports_the_current_status() -> None:
    session = FakeSession(wait_for_job=TimeoutError())
    outcome = run_command(session, "wait", ["j1", "--timeout", "2"])
    assert not outcome.ok
    assert outcome.data["timed_out"] is True
    assert outcome.text == "Timed out after 2s; job j1 is RUNNING"


def test_real_session_matches_the_interface() -> None:
    session_module = pytest.importorskip("shoal.admin.session")
    real = session_module.AdminSession
    for name, member in inspect.getmembers(AdminSessionLike, inspect.isfunction):
        if name.startswith("_"):
            continue
        ours = inspect.signature(member)
        theirs = inspect.signature(getattr(real, name))
        assert list(ours.parameters) == list(theirs.parameters)[: len(ours.parameters)], name


# --- the console ------------------------------------------------------------------

DONE = re.compile(r"^Done \[\d+ usecs\] \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")


def test_console_prints_the_answer_then_a_done_line() -> None:
    c, out = make_console(FakeSession())
    c.onecmd("submit_job hello-tf2")
    lines = out.getvalue().splitlines()
    assert lines[0] == "Submitted job: new-job-1"
    assert DONE.match(lines[1])


def test_console_list_jobs_prints_the_table() -> None:
    c, out = make_console(FakeSession())
    c.onecmd("list_jobs")
    assert "| c8973f05-8787-41c5-8568-ecc15c7683b2 | hello-tf2 | RUNNING |" in out.getvalue()


def test_question_mark_lists_every_command_with_its_usage() -> None:
    c, out = make_console(FakeSession())
    c.onecmd("?")
    text = out.getvalue()
    for command in COMMANDS.values():
        assert command.usage in text
    assert "bye" in text


def test_question_mark_command_shows_usage_help_and_roles() -> None:
    c, out = make_console(FakeSession())
    c.onecmd("? abort_job")
    lines = out.getvalue().splitlines()
    assert lines[0] == "Usage: abort_job JOB_ID"
    assert lines[-1].startswith("Roles: project_admin, org_admin (jobs of their org), lead")


def test_unknown_command_is_one_line_and_the_console_goes_on() -> None:
    c, out = make_console(FakeSession())
    assert not c.onecmd("frobnicate now")
    assert not c.onecmd("? frobnicate")
    assert out.getvalue().splitlines() == [
        "Unknown command 'frobnicate'. Type ? to list commands.",
        "Unknown command 'frobnicate'. Type ? to list commands.",
    ]


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (NotAuthorizedError("lead may not delete jobs"), "Error: not authorized: lead may not"),
        (NotFoundError("no such job: j1"), "Error: not found: no such job: j1"),
        (TransportError("server1:8003 unreachable"), "Error: connection failed: server1:8003"),
        (RuntimeError("boom"), "Error: unexpected RuntimeError: boom"),
    ],
)
def test_session_errors_are_one_line(error: Exception, line: str) -> None:
    c, out = make_console(FakeSession(delete_job=error))
    assert not c.onecmd("delete_job j1")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(line)
    assert DONE.match(lines[1])
    assert len(lines) == 2


def test_job_refused_names_the_reason() -> None:
    c, out = make_console(FakeSession(submit_job=JobValidationError("app/ missing")))
    c.onecmd("submit_job broken")
    assert out.getvalue().startswith("Error: job refused: app/ missing\n")


def test_usage_error_shows_the_usage_and_calls_nothing() -> None:
    session = FakeSession()
    c, out = make_console(session)
    c.onecmd("abort_job")
    assert out.getvalue().splitlines() == [
        "Error: abort_job: the following arguments are required: JOB_ID",
        "Usage: abort_job JOB_ID",
    ]
    assert session.calls == []


def test_unbalanced_quotes_do_not_crash() -> None:
    c, out = make_console(FakeSession())
    c.onecmd('submit_job "hello')
    assert out.getvalue().startswith("Error: cannot parse the line")


def test_empty_line_does_not_repeat_the_last_command() -> None:
    session = FakeSession()
    c, _ = make_console(session)
    c.onecmd("shutdown site-1")
    c.onecmd("")
    assert [call[0] for call in session.calls] == ["shutdown"]


def test_declined_confirmation_runs_nothing() -> None:
    session = FakeSession()
    c, out = make_console(session, confirm=False)
    c.onecmd("shutdown all")
    assert session.calls == []
    assert out.getvalue() == "Cancelled.\n"


def test_confirmation_reads_the_console_input() -> None:
    session = FakeSession()
    out = io.StringIO()
    c = console.AdminConsole(session, stdin=io.StringIO("shutdown all\ny\nbye\n"), stdout=out)
    c.run()
    assert session.calls == [("shutdown", ("all",), {})]
    assert "Are you sure you want to run 'shutdown all'? (y/N) " in out.getvalue()


def test_console_driven_through_stdin() -> None:
    session = FakeSession(abort_job=NotAuthorizedError("not your job"))
    c, out = make_console(session, "check_status\nabort_job j1\nlist_jobs -s RUNNING\nbye\n")
    c.run()
    text = out.getvalue()
    assert text.startswith(console.AdminConsole.intro)
    assert "Error: not authorized: not your job" in text
    assert "| site-1 | yes" in text
    assert [call[0] for call in session.calls] == ["check_status", "abort_job", "list_jobs"]
    assert len([ln for ln in text.splitlines() if DONE.match(ln.removeprefix("> "))]) == 3


@pytest.mark.parametrize("leave", ["bye\n", "exit\n", ""])
def test_bye_exit_and_end_of_input_leave(leave: str) -> None:
    session = FakeSession()
    c, _ = make_console(session, leave + "list_jobs\n")
    c.run()
    assert session.calls == [] or leave == ""


def test_tab_completes_command_names_job_ids_and_targets() -> None:
    session = FakeSession()
    c, _ = make_console(session)
    assert c.completenames("list") == ["list_jobs "]
    assert c.completenames("b") == ["bye "]
    # The first completion of a job id asks the server once.
    assert c.completedefault("c89", "abort_job c89", 10, 13) == [JOB["job_id"]]
    assert c.completedefault("", "list_jobs -d ", 13, 13) == [JOB["job_id"]]
    assert [call[0] for call in session.calls] == ["list_jobs"]
    c.onecmd("submit_job hello-tf2")
    assert "new-job-1" in c.completedefault("new", "cat_log new", 8, 11)
    c.onecmd("check_status")
    assert c.completedefault("s", "shutdown s", 9, 10) == ["server", "site-1"]
    assert c.completedefault("", "cat_log j1 ", 11, 11) == ["server", "site-1"]
    assert c.completedefault("", "nosuch ", 7, 7) == []


def test_login_prints_what_nvflare_users_expect(tmp_path: Path) -> None:
    (tmp_path / "startup").mkdir()
    (tmp_path / "startup" / "fed_admin.json").write_text(json.dumps({"name": "admin@nvidia.com"}))
    out = io.StringIO()
    seen: dict[str, Any] = {}

    def opener(kit: Path, *, server_address: str | None, timeout: float) -> FakeSession:
        seen.update(kit=kit, server_address=server_address, timeout=timeout)
        return FakeSession()

    session = console.login(tmp_path, server_address="127.0.0.1:8003", out=out, open_session=opener)
    assert session.session_id == FakeSession.session_id
    assert seen == {"kit": tmp_path, "server_address": "127.0.0.1:8003", "timeout": 30.0}
    assert out.getvalue().splitlines() == [
        "User Name: admin@nvidia.com",
        "Trying to login, please wait ...",
        "Logged into server at server1:8003 with SSID: ebc6125d-0a56-4688-9b08-355fe9e4d61a",
    ]


def test_history_lives_in_the_kit_local_folder(tmp_path: Path) -> None:
    assert console.history_path(tmp_path) == Path.home() / ".shoal_admin_history"
    (tmp_path / "local").mkdir()
    assert console.history_path(tmp_path) == tmp_path / "local" / ".shoal_admin_history"


def test_cat_log_prints_escape_sequences_escaped_and_returns_the_raw_text() -> None:
    session = FakeSession()
    session.answers["get_log"] = "ok\n\x1b]0;pwned\x07\x1b[2J\n"
    c, out = make_console(session)
    outcome = c.execute("cat_log", ["j1", "site-1"])
    assert "\x1b" not in out.getvalue() and "\x07" not in out.getvalue()
    assert "ok\n\\x1b]0;pwned\\x07\\x1b[2J\n" in out.getvalue()
    assert outcome is not None and outcome.data["log"] == "ok\n\x1b]0;pwned\x07\x1b[2J\n"


def test_errors_from_the_server_print_escaped() -> None:
    c, out = make_console(FakeSession(abort_job=NotFoundError("no job \x1b[2J\x1b]0;x\x07")))
    c.onecmd("abort_job j1")
    assert "\x1b" not in out.getvalue()
    assert "Error: not found: no job \\x1b[2J\\x1b]0;x\\x07" in out.getvalue()
