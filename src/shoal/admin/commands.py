"""The admin command table, shared by the interactive console and ``shoal admin``.

Each :class:`Command` names one console command: its usage line, its help, the
roles that may run it (documentation only: the server enforces roles), how its
arguments parse, and a function that calls the :class:`AdminSession` and returns
an :class:`Outcome` holding both the JSON-able answer and the text to print::

    outcome = run_command(session, "list_jobs", ["-s", "RUNNING"])
    print(outcome.text)      # the boxed table
    outcome.result           # the list of JobSummary
    outcome.data             # the same as the server sent it, for --json

Parsing never exits the process: a bad argument raises :class:`CommandUsageError`
(a ConfigError, so exit code 2) carrying the command's usage line.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Protocol

from shoal.admin import format as fmt
from shoal.admin.results import (
    AuditEvents,
    FederationStatus,
    JobErrors,
    JobMeta,
    JobStats,
    JobSummary,
    SysInfo,
)
from shoal.errors import (
    ConfigError,
    JobValidationError,
    NotAuthorizedError,
    NotFoundError,
    ShoalError,
    TransportError,
)
from shoal.observe.progress import RoundBar, latest_metrics

__all__ = [
    "COMMANDS",
    "ROLES",
    "AdminSessionLike",
    "Command",
    "CommandUsageError",
    "Outcome",
    "UnknownCommandError",
    "describe_error",
    "get_command",
    "parse_args",
    "run_command",
]

COMPLETED = "FINISHED:COMPLETED"


class AdminSessionLike(Protocol):
    """What the commands need from :class:`shoal.admin.session.AdminSession`."""

    user: str
    role: str
    server_name: str
    server_address: str
    session_id: str
    #: This admin's certificate or the project CA ends within 30 days.
    certificate_warnings: list[str]

    def check_status(self) -> FederationStatus: ...
    def sys_info(self, target: str = "server") -> SysInfo: ...
    def submit_job(self, path: str | Path) -> str: ...
    def list_jobs(
        self, *, name: str | None = None, status: str | None = None, limit: int | None = None
    ) -> list[JobSummary]: ...
    def get_job_meta(self, job_id: str) -> JobMeta: ...
    def abort_job(self, job_id: str) -> None: ...
    def clone_job(self, job_id: str) -> str: ...
    def delete_job(self, job_id: str) -> None: ...
    def download_job(self, job_id: str, dest: str | Path | None = None) -> Path: ...
    def show_stats(self, job_id: str) -> JobStats: ...
    def show_errors(self, job_id: str) -> JobErrors: ...
    def get_log(self, job_id: str, target: str = "server", tail: int | None = None) -> str: ...
    def shutdown(self, target: str = "server") -> None: ...
    def restart(self, target: str = "server") -> None: ...
    def audit(
        self,
        *,
        since: str | None = None,
        site: str | None = None,
        event: str | None = None,
        limit: int = 100,
        verify: bool = False,
    ) -> AuditEvents: ...
    def wait_for_job(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll_s: float = 0.5,
        on_poll: Callable[[JobMeta], None] | None = None,
    ) -> JobMeta: ...
    def close(self) -> None: ...


class CommandUsageError(ConfigError):
    """A command's arguments did not parse; ``usage`` is the command's usage line."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.usage = usage


class UnknownCommandError(CommandUsageError):
    """No command by that name."""


@dataclass(frozen=True)
class Outcome:
    """What a command produced."""

    data: Any
    """The answer as JSON data, as the server sent it (``--json`` prints it)."""
    text: str
    """What the console prints."""
    ok: bool = True
    """False when the command ran but its answer means failure (``wait`` on a failed job)."""
    result: Any = None
    """The session's typed answer (:mod:`shoal.admin.results`); ``None`` where the
    answer is only an id or a confirmation."""


#: Role -> what it may do, as the server enforces it (see docs/admin.md).
ROLES: Mapping[str, str] = {
    "project_admin": "every command, on every job and participant",
    "org_admin": "job commands on jobs of their org; check_status; sys_info of the server "
    "and of sites of their org; shutdown/restart of sites of their org",
    "lead": "submit jobs; every job command but delete_job on their own jobs; check_status",
    "member": "read-only: list_jobs (jobs of their org), check_status, "
    "sys_info of the server and of sites of their org",
}

_ALL = "yes"
_JOB_ORG = "jobs of their org"
_JOB_OWN = "their own jobs"
_SITE_ORG = "the server, sites of their org"


@dataclass(frozen=True)
class Command:
    """One admin command."""

    name: str
    """What the operator types."""
    usage: str
    """One line: name and arguments, e.g. ``abort_job JOB_ID``."""
    help: str
    """First line: a summary for ``?``; the rest shows on ``? name``."""
    roles: Mapping[str, str]
    """Role -> scope for the roles that may run it; a role not listed may not."""
    arguments: Callable[[argparse.ArgumentParser], None]
    """Adds the command's arguments to a parser."""
    run: Callable[[AdminSessionLike, argparse.Namespace], Outcome]
    """Calls the session and shapes the answer."""
    takes_job_id: bool = False
    """Whether the first argument is a job id (tab completion)."""
    confirm: bool = False
    """Whether the interactive console asks before running it."""
    parser: argparse.ArgumentParser = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parser = _Parser(prog=self.name, usage=self.usage, add_help=False)
        self.arguments(parser)
        object.__setattr__(self, "parser", parser)

    @property
    def summary(self) -> str:
        return self.help.split("\n", 1)[0]

    def describe(self) -> str:
        """The text ``? name`` shows: usage, help, who may run it."""
        roles = ", ".join(
            role if scope == _ALL else f"{role} ({scope})" for role, scope in self.roles.items()
        )
        return f"Usage: {self.usage}\n{self.help}\nRoles: {roles}"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CommandUsageError(f"{self.prog}: {message}", self.usage or self.prog)


# --- the commands ---------------------------------------------------------------


def _job_id(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", metavar="JOB_ID")


def _check_status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", nargs="?", choices=("server", "client"))
    p.add_argument("sites", nargs="*", metavar="SITE")


def _check_status(s: AdminSessionLike, a: argparse.Namespace) -> Outcome:
    status = s.check_status()
    if a.sites:
        if a.target != "client":
            raise CommandUsageError("site names follow 'client'", _usage("check_status"))
        known = {site.name for site in status.sites}
        missing = [name for name in a.sites if name not in known]
        if missing:
            raise NotFoundError(f"no such site: {', '.join(missing)}")
        status = status.only_sites(set(a.sites))
    return Outcome(status.to_dict(), fmt.format_status(status, target=a.target), result=status)


def _sys_info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", nargs="?", default="server", metavar="TARGET")


def _sys_info(s: AdminSessionLike, a: argparse.Namespace) -> Outcome:
    info = s.sys_info(a.target)
    return Outcome(info.to_dict(), fmt.format_details(info), result=info)


def _submit_job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH")
    p.add_argument("--wait", action="store_true")
    p.add_argument("--timeout", type=float, metavar="S")


def _submit_job(s: AdminSessionLike, a: argparse.Namespace) -> Outcome:
    job_id = s.submit_job(a.path)
    submitted = f"Submitted job: {job_id}"
    if not a.wait:
        return Outcome({"job_id": job_id}, submitted)
    waited = _wait_for(s, job_id, a)
    return Outcome(waited.data, f"{submitted}\n{waited.text}", ok=waited.ok, result=waited.result)


def _list_jobs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--name", metavar="NAME")
    p.add_argument("-s", "--status", metavar="STATUS")
    p.add_argument("-m", "--limit", type=_positive_int, metavar="LIMIT")
    p.add_argument("-d", "--detail", metavar="JOB_ID")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


_positive_int.__name__ = "positive integer"  # argparse names the type in its message


def _list_jobs(s: AdminSessionLike, a: argparse.Namespace) -> Outcome:
    if a.detail:
        meta = s.get_job_meta(a.detail)
        return Outcome(meta.to_dict(), fmt.format_job_detail(meta), result=meta)
    jobs = s.list_jobs(name=a.name, status=a.status, limit=a.limit)
    return Outcome([j.to_dict() for j in jobs], fmt.format_jobs(jobs), result=jobs)


def _abort_job(s: AdminSessionLike, a: argparse.Namespace) -> Outcome:
    s.abort_job(a.job_id)
    return Outcome({"job_id": a.job_id}, f"Abort sent to job {a.job_id}.")


def _clone_job(s: AdminSessionLike, a: argparse.Namespace) -> Outcome:
    new_id = s.clone_job(a.job_id)
    return Outcome(
        {"job_id": new_id, "source_job_id": a.job_id}, f"Cloned job {a.job_id} as: {new_id}"
    )


def _delete_job(s: AdminSessionLike, a: argparse.Namespace) -> Outcome:
    s.delete_job(a.job_id)
    return Outcome({"job_id": a.job_id}, f"Deleted job {a.job_id}.")


def _download_job_args(p: argparse.ArgumentParser) -> None:
    _job_id(p)
    p.add_argument("dest", nargs="?", metavar="DEST")


def _download_job(s: AdminSessionLike, a: argparse.Namespace) -> Outcome:
    path = s.download_job(a.job_id, a.dest)
    return Outcome({"job_id": a.job_id, "path": str(path)}, f"Downloaded job {a.job_id} to {path}")


def _show_stats(s: AdminSessionLike, a: argparse.Namespace) -> Outcome:
    stats = s.show_stats(a.job_id)
    return Outcome(stats.to_dict(), fmt.format_stats(stats), result=stats)


def _show_errors(s: AdminSessionLike, a: argparse.Namespace) -> Outcome:
    errors = s.show_errors(a.job_id)
    return Outcome(errors.to_dict(), fmt.format_errors(errors), result=errors)


def _cat_log_args(p: argparse.ArgumentParser) -> None:
    _job_id(p)
    p.add_argument("target", nargs="?", default="server", metavar="TARGET")
    p.add_argument("-t", "--tail", type=_positive_int, metavar="N")


def _cat_log(s: AdminSessionLike, a: argparse.Namespace) -> Outcome:
    text = s.get_log(a.job_id, a.target, a.tail)
    return Outcome({"job_id": a.job_id, "target": a.target, "log": text}, fmt.format_log(text))


def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", nargs="?", default="server", metavar="TARGET")


def _shutdown(s: AdminSessionLike, a: argparse.Namespace) -> Outcome:
    s.shutdown(a.target)
    return Outcome({"target": a.target}, f"Shutdown requested: {a.target}")


def _restart(s: AdminSessionLike, a: argparse.Namespace) -> Outcome:
    s.restart(a.target)
    return Outcome({"target": a.target}, f"Restart requested: {a.target}")


def _audit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", metavar="ISO_TIME")
    p.add_argument("--site", metavar="SITE")
    p.add_argument("--event", metavar="EVENT")
    p.add_argument("-n", "--limit", type=_positive_int, default=50, metavar="N")
    p.add_argument("--verify", action="store_true")


def _audit(s: AdminSessionLike, a: argparse.Namespace) -> Outcome:
    events = s.audit(since=a.since, site=a.site, event=a.event, limit=a.limit, verify=a.verify)
    ok = events.verify is None or bool(events.verify.get("ok"))
    return Outcome(events.to_dict(), fmt.format_audit(events), ok=ok, result=events)


def _wait_args(p: argparse.ArgumentParser) -> None:
    _job_id(p)
    p.add_argument("--timeout", type=float, metavar="S")


class _Watch:
    """Draws a waited-for job's round and latest metrics on a :class:`RoundBar`
    as ``wait_for_job`` polls: ``show_stats`` at most once a second, and once
    more when the job ends. A job the admin may not see the stats of is
    waited for without a bar."""

    def __init__(self, session: AdminSessionLike, job_id: str, bar: RoundBar) -> None:
        self.session, self.job_id, self.bar = session, job_id, bar
        self._next = 0.0
        self._off = False

    def __call__(self, meta: JobMeta) -> None:
        now = time.monotonic()
        finished = meta.status.startswith("FINISHED:")
        if self._off or (now < self._next and not finished):
            return
        self._next = now + 1.0
        if meta.status in ("SUBMITTED", "DISPATCHED"):
            self.bar.update(round=None, total=None, status=meta.status)
            return
        try:
            stats = self.session.show_stats(self.job_id)
        except ShoalError:
            self._off = True
            return
        label, metrics = latest_metrics(stats.metrics)
        self.bar.update(
            round=stats.current_round,
            total=stats.num_rounds,
            metrics=metrics,
            label=label,
            status=meta.status,
        )


def _wait(s: AdminSessionLike, a: argparse.Namespace) -> Outcome:
    return _wait_for(s, a.job_id, a)


def _wait_for(s: AdminSessionLike, job_id: str, a: argparse.Namespace) -> Outcome:
    """Wait for ``job_id`` (``a.timeout``), drawing ``a.progress`` (a RoundBar) if given."""
    bar: RoundBar | None = getattr(a, "progress", None)
    try:
        if bar is None:
            meta = s.wait_for_job(job_id, timeout=a.timeout)
        else:
            meta = s.wait_for_job(job_id, timeout=a.timeout, on_poll=_Watch(s, job_id, bar))
    except TimeoutError:
        meta = s.get_job_meta(job_id)
        return Outcome(
            {**meta.to_dict(), "timed_out": True},
            f"Timed out after {a.timeout:g}s; job {job_id} is {meta.status}",
            ok=False,
            result=meta,
        )
    finally:
        if bar is not None:
            bar.close()
    text = f"Job {job_id} {meta.status}"
    if meta.run_duration_s is not None:
        text += f" after {fmt.format_duration(meta.run_duration_s)}"
    return Outcome(meta.to_dict(), text, ok=meta.status == COMPLETED, result=meta)


_JOB_ROLES = {"project_admin": _ALL, "org_admin": _JOB_ORG}
_LEAD_JOB_ROLES = {**_JOB_ROLES, "lead": _JOB_OWN}
_SITE_CONTROL_ROLES = {"project_admin": _ALL, "org_admin": "sites of their org"}

COMMANDS: Mapping[str, Command] = {
    c.name: c
    for c in (
        Command(
            "check_status",
            "check_status [server|client [SITE ...]]",
            "Show the server's state and which sites are connected.\n"
            "'server' shows only the server line, 'client' only the sites (optionally named ones).",
            {"project_admin": _ALL, "org_admin": _ALL, "lead": _ALL, "member": _ALL},
            _check_status_args,
            _check_status,
        ),
        Command(
            "sys_info",
            "sys_info [server|SITE]",
            "Show platform, Python, shoal version, CPU and memory of the server or a site.",
            {"project_admin": _ALL, "org_admin": _SITE_ORG, "member": _SITE_ORG},
            _sys_info_args,
            _sys_info,
        ),
        Command(
            "submit_job",
            "submit_job PATH [--wait [--timeout S]]",
            "Submit a job folder. A bare name is looked up in the kit's transfer/ folder first.\n"
            "A job the server refuses is reported with the reason; nothing is stored.\n"
            "--wait: then wait for it as wait_job does (a round progress bar, exit 0 only if\n"
            "it ends FINISHED:COMPLETED).",
            _LEAD_JOB_ROLES,
            _submit_job_args,
            _submit_job,
        ),
        Command(
            "list_jobs",
            "list_jobs [-n NAME] [-s STATUS] [-m LIMIT] [-d JOB_ID]",
            "List jobs.\n"
            "-n NAME: only jobs named NAME; -s STATUS: only that status\n"
            "(e.g. RUNNING, FINISHED:COMPLETED); -m LIMIT: at most LIMIT jobs;\n"
            "-d JOB_ID: every detail of one job.",
            {**_LEAD_JOB_ROLES, "member": "jobs of their org, read-only"},
            _list_jobs_args,
            _list_jobs,
        ),
        Command(
            "abort_job",
            "abort_job JOB_ID",
            "Abort a running job: the server stops its workflow and every site stops training.",
            _LEAD_JOB_ROLES,
            _job_id,
            _abort_job,
            takes_job_id=True,
        ),
        Command(
            "clone_job",
            "clone_job JOB_ID",
            "Submit a copy of a job (same folder, new job id).",
            _LEAD_JOB_ROLES,
            _job_id,
            _clone_job,
            takes_job_id=True,
        ),
        Command(
            "delete_job",
            "delete_job JOB_ID",
            "Delete a job that is not running, with its stored results.",
            _JOB_ROLES,
            _job_id,
            _delete_job,
            takes_job_id=True,
            confirm=True,
        ),
        Command(
            "download_job",
            "download_job JOB_ID [DEST]",
            "Download a job's folder and results (default: the kit's transfer/ folder).",
            _LEAD_JOB_ROLES,
            _download_job_args,
            _download_job,
            takes_job_id=True,
        ),
        Command(
            "show_stats",
            "show_stats JOB_ID",
            "Show a running job's round, each site's state and the metrics per round.",
            _LEAD_JOB_ROLES,
            _job_id,
            _show_stats,
            takes_job_id=True,
        ),
        Command(
            "show_errors",
            "show_errors JOB_ID",
            "Show the errors a job's server and sites reported.",
            _LEAD_JOB_ROLES,
            _job_id,
            _show_errors,
            takes_job_id=True,
        ),
        Command(
            "cat_log",
            "cat_log JOB_ID [server|SITE] [--tail N]",
            "Print a job's log from the server (default) or from a site; --tail N: last N lines.",
            _LEAD_JOB_ROLES,
            _cat_log_args,
            _cat_log,
            takes_job_id=True,
        ),
        Command(
            "shutdown",
            "shutdown [server|SITE|all]",
            "Shut down the server (default), one site, or every site and then the server.\n"
            "Running jobs are stopped and can be resumed after a restart.",
            _SITE_CONTROL_ROLES,
            _target_args,
            _shutdown,
            confirm=True,
        ),
        Command(
            "restart",
            "restart [server|SITE|all]",
            "Restart the server (default), one site, or all of them.",
            _SITE_CONTROL_ROLES,
            _target_args,
            _restart,
            confirm=True,
        ),
        Command(
            "audit",
            "audit [--since ISO_TIME] [--site SITE] [--event EVENT] [-n N] [--verify]",
            "Show the server's audit trail: admin commands with the caller, job states, sites.\n"
            "--since: events at or after this UTC time; --site: events naming SITE;\n"
            "--event: one kind (admin.command, job.status, site.connected, ...);\n"
            "-n N: the last N (default 50); --verify: check the whole hash chain first.\n"
            "The head printed last (SEQ:SHA256) is worth noting down elsewhere:\n"
            "`shoal audit verify --head` proves later that nothing before it changed.",
            {"project_admin": _ALL},
            _audit_args,
            _audit,
        ),
        Command(
            "wait",
            "wait JOB_ID [--timeout S]",
            "Block until a job finishes; succeeds only if it ends FINISHED:COMPLETED.\n"
            "Meant for scripts: `shoal admin --kit DIR wait JOB_ID` exits 0 or 1. Shows the\n"
            "round and the latest metrics meanwhile (one line per round when not a terminal).",
            _LEAD_JOB_ROLES,
            _wait_args,
            _wait,
            takes_job_id=True,
        ),
        Command(
            "wait_job",
            "wait_job JOB_ID [--timeout S]",
            "The same as wait (the name NVIDIA FLARE users look for).",
            _LEAD_JOB_ROLES,
            _wait_args,
            _wait,
            takes_job_id=True,
        ),
    )
}


def _usage(name: str) -> str:
    return COMMANDS[name].usage


def get_command(name: str) -> Command:
    """The command called ``name``; :class:`UnknownCommandError` if none."""
    try:
        return COMMANDS[name]
    except KeyError:
        raise UnknownCommandError(
            f"unknown command '{name}'; type ? to list commands", ""
        ) from None


def parse_args(name: str, args: Sequence[str]) -> argparse.Namespace:
    """Parse ``args`` for command ``name``; raises :class:`CommandUsageError`."""
    return get_command(name).parser.parse_args(list(args))


def run_command(
    session: AdminSessionLike,
    name: str,
    args: Sequence[str],
    *,
    progress: RoundBar | None = None,
) -> Outcome:
    """Parse ``args`` and run command ``name`` on ``session``; a command that
    waits for a job draws its rounds on ``progress`` meanwhile."""
    parsed = parse_args(name, args)
    parsed.progress = progress
    return get_command(name).run(session, parsed)


def describe_error(exc: BaseException) -> str:
    """One line (two for usage errors) for an error a command raised."""
    if isinstance(exc, UnknownCommandError):
        return f"Error: {exc}"
    if isinstance(exc, CommandUsageError):
        return f"Error: {exc}\nUsage: {exc.usage}" if exc.usage else f"Error: {exc}"
    if isinstance(exc, NotAuthorizedError):
        return f"Error: not authorized: {exc}"
    if isinstance(exc, NotFoundError):
        return f"Error: not found: {exc}"
    if isinstance(exc, JobValidationError):
        return f"Error: job refused: {exc}"
    if isinstance(exc, TransportError):
        return f"Error: connection failed: {exc}"
    if isinstance(exc, ShoalError):
        return f"Error: {exc}"
    return f"Error: unexpected {type(exc).__name__}: {exc}"
