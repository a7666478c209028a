from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from shoal.admin.results import JobMeta, JobSummary, jobs_from_json
from shoal.cli import admin as cli_admin
from shoal.cli.app import EXIT_FAILURE, EXIT_NOT_AUTHORIZED, EXIT_NOT_FOUND, EXIT_USAGE, main
from shoal.errors import (
    JobValidationError,
    KitError,
    NotAuthorizedError,
    NotFoundError,
    TransportError,
)

JOB = {
    "job_id": "c8973f05-8787-41c5-8568-ecc15c7683b2",
    "name": "hello-tf2",
    "status": "FINISHED:COMPLETED",
    "submit_time": "2024-05-23T09:47:04.488652+00:00",
    "run_duration_s": 104.335456,
}


class FakeSession:
    """The part of AdminSession the CLI tests touch; ``raises`` maps method -> error."""

    user = "admin@nvidia.com"
    role = "project_admin"
    server_name = "server1"
    server_address = "server1:8003"
    certificate_warnings: list[str] = []  # noqa: RUF012 - a fake's plain attribute
    session_id = "ebc6125d"

    def __init__(self, raises: dict[str, BaseException] | None = None) -> None:
        self.raises = raises or {}
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.closed = False
        self.final_status = "FINISHED:COMPLETED"

    def _call(self, method: str, *args: Any) -> None:
        self.calls.append((method, args))
        if method in self.raises:
            raise self.raises[method]

    def list_jobs(
        self, *, name: Any = None, status: Any = None, limit: Any = None
    ) -> list[JobSummary]:
        self._call("list_jobs", name, status, limit)
        return jobs_from_json([JOB])

    def submit_job(self, path: str | Path) -> str:
        self._call("submit_job", path)
        return "new-job"

    def abort_job(self, job_id: str) -> None:
        self._call("abort_job", job_id)

    def get_job_meta(self, job_id: str) -> JobMeta:
        self._call("get_job_meta", job_id)
        return JobMeta.from_json({**JOB, "job_id": job_id})

    def wait_for_job(
        self, job_id: str, *, timeout: Any = None, poll_s: float = 0.5, on_poll: Any = None
    ) -> JobMeta:
        self._call("wait_for_job", job_id, timeout)
        return JobMeta.from_json({**JOB, "job_id": job_id, "status": self.final_status})

    def get_log(self, job_id: str, target: str = "server", tail: int | None = None) -> str:
        self._call("get_log", job_id, target, tail)
        return "ok\n\x1b]0;pwned\x07\x1b[2J\n"

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def kit(tmp_path: Path) -> Path:
    (tmp_path / "startup").mkdir()
    (tmp_path / "local").mkdir()
    (tmp_path / "startup" / "fed_admin.json").write_text(
        json.dumps({"format": 1, "name": "admin@nvidia.com", "role": "project_admin"})
    )
    return tmp_path


@pytest.fixture
def session(monkeypatch: pytest.MonkeyPatch) -> FakeSession:
    fake = FakeSession()
    opened: list[dict[str, Any]] = []

    def open_session(kit: Path, *, server_address: str | None, timeout: float) -> FakeSession:
        opened.append({"kit": kit, "server_address": server_address, "timeout": timeout})
        return fake

    monkeypatch.setattr(cli_admin, "_open_session", open_session)
    monkeypatch.delenv(cli_admin.ENV_SERVER, raising=False)
    monkeypatch.delenv(cli_admin.ENV_KIT, raising=False)
    fake.opened = opened  # type: ignore[attr-defined]
    return fake


def admin(kit: Path, *args: str) -> int:
    return main(["admin", "--kit", str(kit), *args])


def test_runs_one_command_and_prints_the_table(
    kit: Path, session: FakeSession, capsys: pytest.CaptureFixture[str]
) -> None:
    assert admin(kit, "list_jobs", "-s", "RUNNING", "-m", "5") == 0
    out = capsys.readouterr().out
    assert "| JOB ID " in out and "| 0:01:44.335456 |" in out
    assert "Done [" not in out  # the Done line is the console's, not a script's
    assert session.calls == [("list_jobs", (None, "RUNNING", 5))]
    assert session.closed


def test_json_output_is_one_document(
    kit: Path, session: FakeSession, capsys: pytest.CaptureFixture[str]
) -> None:
    assert admin(kit, "--json", "submit_job", "hello-tf2") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == {"command": "submit_job", "ok": True, "result": {"job_id": "new-job"}}


def test_json_flag_after_the_command_is_accepted(
    kit: Path, session: FakeSession, capsys: pytest.CaptureFixture[str]
) -> None:
    assert admin(kit, "list_jobs", "--json") == 0
    assert json.loads(capsys.readouterr().out)["result"] == [JOB]
    assert session.calls == [("list_jobs", (None, None, None))]


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (NotAuthorizedError("role lead"), EXIT_NOT_AUTHORIZED, "Error: not authorized: role lead"),
        (NotFoundError("no such job: x"), EXIT_NOT_FOUND, "Error: not found: no such job: x"),
        (JobValidationError("bad job.yml"), EXIT_USAGE, "Error: job refused: bad job.yml"),
        (TransportError("unreachable"), EXIT_FAILURE, "Error: connection failed: unreachable"),
        (RuntimeError("bug"), EXIT_FAILURE, "Error: unexpected RuntimeError: bug"),
    ],
)
def test_exit_codes_per_error(
    kit: Path,
    session: FakeSession,
    capsys: pytest.CaptureFixture[str],
    error: Exception,
    code: int,
    message: str,
) -> None:
    session.raises["abort_job"] = error
    assert admin(kit, "abort_job", "x") == code
    captured = capsys.readouterr()
    assert captured.err.strip() == message
    assert captured.out == ""
    assert session.closed


def test_json_errors_are_a_document_too(
    kit: Path, session: FakeSession, capsys: pytest.CaptureFixture[str]
) -> None:
    session.raises["abort_job"] = NotAuthorizedError("role member")
    assert admin(kit, "--json", "abort_job", "x") == EXIT_NOT_AUTHORIZED
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False
    assert doc["error"] == {
        "type": "NotAuthorizedError",
        "message": "role member",
        "exit_code": EXIT_NOT_AUTHORIZED,
    }


@pytest.mark.parametrize(
    "args",
    [["no_such_command"], ["abort_job"], ["list_jobs", "-m", "x"], ["wait", "j", "--timeout"]],
)
def test_usage_errors_exit_2_before_dialling(
    kit: Path, session: FakeSession, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    assert admin(kit, *args) == EXIT_USAGE
    assert capsys.readouterr().err.startswith("Error: ")
    assert session.opened == []  # type: ignore[attr-defined]


def test_login_failure_exit_code(
    kit: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(kit: Path, **_: Any) -> FakeSession:
        raise TransportError("server1:8003: connection refused")

    monkeypatch.setattr(cli_admin, "_open_session", refuse)
    assert admin(kit, "list_jobs") == EXIT_FAILURE
    assert "connection refused" in capsys.readouterr().err

    def tampered(kit: Path, **_: Any) -> FakeSession:
        raise KitError("startup/client.crt changed since signing")

    monkeypatch.setattr(cli_admin, "_open_session", tampered)
    assert admin(kit, "list_jobs") == EXIT_FAILURE


def test_wait_exit_code_follows_the_final_status(
    kit: Path, session: FakeSession, capsys: pytest.CaptureFixture[str]
) -> None:
    assert admin(kit, "wait", "j1", "--timeout", "30") == 0
    assert session.calls[-1] == ("wait_for_job", ("j1", 30.0))
    session.final_status = "FINISHED:ABORTED"
    assert admin(kit, "wait", "j1") == EXIT_FAILURE
    assert "FINISHED:ABORTED" in capsys.readouterr().out


def test_server_address_from_flag_or_environment(
    kit: Path, session: FakeSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin(kit, "list_jobs")
    main(["admin", "--kit", str(kit), "--server", "10.0.0.5:8003", "list_jobs"])
    monkeypatch.setenv(cli_admin.ENV_SERVER, "lb:9003")
    admin(kit, "list_jobs")
    assert [o["server_address"] for o in session.opened] == [  # type: ignore[attr-defined]
        None,
        "10.0.0.5:8003",
        "lb:9003",
    ]


def test_kit_from_environment_or_its_startup_folder(
    kit: Path,
    session: FakeSession,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(cli_admin.ENV_KIT, str(kit))
    assert main(["admin", "list_jobs"]) == 0
    monkeypatch.delenv(cli_admin.ENV_KIT)
    monkeypatch.chdir(kit / "startup")  # where NVFlare users run fl_admin.sh
    assert main(["admin", "list_jobs"]) == 0
    assert [o["kit"].resolve() for o in session.opened] == [kit.resolve()] * 2  # type: ignore[attr-defined]


def test_not_a_kit_is_a_usage_error(
    tmp_path: Path, session: FakeSession, capsys: pytest.CaptureFixture[str]
) -> None:
    assert admin(tmp_path, "list_jobs") == EXIT_USAGE
    assert "not an admin startup kit" in capsys.readouterr().err


def test_interactive_console_logs_in_runs_and_closes(
    kit: Path,
    session: FakeSession,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("list_jobs\nfoo\nbye\n"))
    assert admin(kit) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "User Name: admin@nvidia.com\nTrying to login, please wait ...\n"
        "Logged into server at server1:8003 with SSID: ebc6125d\n"
        'Type ? to list commands; type "? cmdName" to show usage of a command.\n'
    )
    assert "FINISHED:COMPLETED" in out
    assert "Unknown command 'foo'" in out
    assert session.closed


def test_json_without_a_command_is_a_usage_error(
    kit: Path, session: FakeSession, capsys: pytest.CaptureFixture[str]
) -> None:
    assert admin(kit, "--json") == EXIT_USAGE


def test_help_after_a_command_shows_its_usage_and_roles(
    kit: Path, session: FakeSession, capsys: pytest.CaptureFixture[str]
) -> None:
    assert admin(kit, "cat_log", "--help") == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: cat_log JOB_ID [server|SITE] [--tail N]\n")
    assert "Roles: project_admin" in out
    assert session.opened == []  # type: ignore[attr-defined]


def test_cat_log_prints_escape_sequences_escaped(
    kit: Path, session: FakeSession, capsys: pytest.CaptureFixture[str]
) -> None:
    assert admin(kit, "cat_log", "j1", "site-1") == 0
    out = capsys.readouterr().out
    assert out == "ok\n\\x1b]0;pwned\\x07\\x1b[2J\n"
    # --json is data: the text as stored, which JSON itself escapes.
    assert admin(kit, "--json", "cat_log", "j1") == 0
    raw = capsys.readouterr().out
    assert "\x1b" not in raw
    assert json.loads(raw)["result"]["log"] == "ok\n\x1b]0;pwned\x07\x1b[2J\n"


def test_error_messages_print_escaped(kit: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    fake = FakeSession(raises={"abort_job": NotFoundError("no job \x1b[2J")})
    monkeypatch.setattr(cli_admin, "_open_session", lambda kit, **_: fake)
    assert admin(kit, "abort_job", "j1") == EXIT_NOT_FOUND
    assert capsys.readouterr().err == "Error: not found: no job \\x1b[2J\n"
