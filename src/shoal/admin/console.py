"""The interactive admin console (``shoal admin --kit DIR``).

A :mod:`cmd` loop over the shared command table in :mod:`shoal.admin.commands`.
It reads like NVIDIA FLARE's ``fl_admin.sh`` on purpose, so operators find what
they expect: the login lines, ``?`` and ``? cmdName``, and a
``Done [N usecs] <timestamp>`` line after each command. An error from the
server is one line; the console never dies on one.

Driving it from code or tests::

    console = AdminConsole(session, stdin=io.StringIO("list_jobs\\nbye\\n"), stdout=out)
    console.run()
"""

from __future__ import annotations

import cmd
import contextlib
import datetime as dt
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from shoal.admin import format as fmt
from shoal.admin.commands import (
    COMMANDS,
    AdminSessionLike,
    CommandUsageError,
    Outcome,
    describe_error,
    get_command,
    parse_args,
)
from shoal.admin.results import FederationStatus, JobSummary
from shoal.observe.progress import RoundBar

__all__ = ["AdminConsole", "done_line", "history_path", "kit_user_name", "login"]

log = logging.getLogger(__name__)

HISTORY_FILE = ".shoal_admin_history"
HISTORY_LENGTH = 1000
_LEAVE = ("bye", "exit", "quit")


def history_path(kit_dir: Path | None) -> Path:
    """The kit's ``local/`` folder when it is writable, else ``~/.shoal_admin_history``."""
    if kit_dir is not None:
        local = Path(kit_dir) / "local"
        if local.is_dir() and os.access(local, os.W_OK):
            return local / HISTORY_FILE
    return Path.home() / HISTORY_FILE


def kit_user_name(kit_dir: Path) -> str | None:
    """The admin's name from the kit's ``startup/fed_admin.json``, before any connection."""
    try:
        config = json.loads((Path(kit_dir) / "startup" / "fed_admin.json").read_text())
    except (OSError, ValueError):
        return None
    name = config.get("name") if isinstance(config, dict) else None
    return name if isinstance(name, str) else None


def done_line(elapsed_s: float, now: dt.datetime | None = None) -> str:
    """``Done [262650 usecs] 2024-05-23 09:47:04.543903`` (local time)."""
    return f"Done [{round(elapsed_s * 1_000_000)} usecs] {now or dt.datetime.now()}"


class AdminConsole(cmd.Cmd):
    """The console over one logged-in session.

    ``confirm`` asks before commands that stop things (shutdown, restart,
    delete_job); by default it prompts on the console's own input. Pass
    ``lambda question: True`` to skip the question.
    """

    prompt = "> "
    intro = 'Type ? to list commands; type "? cmdName" to show usage of a command.'
    doc_header = "Commands"

    def __init__(
        self,
        session: AdminSessionLike,
        *,
        stdin: IO[str] | None = None,
        stdout: IO[str] | None = None,
        history_file: Path | None = None,
        confirm: Callable[[str], bool] | None = None,
    ) -> None:
        super().__init__(stdin=stdin, stdout=stdout)
        self.session = session
        self.stdout: IO[str]
        # With a file for stdin (tests, a pipe) there is no line editing to offer.
        self.use_rawinput = stdin is None
        self.history_file = history_file
        self._confirm = confirm
        self._job_ids: list[str] = []
        self._sites: list[str] = []
        self._readline: Any = None

    # --- loop -------------------------------------------------------------------

    def run(self) -> None:
        """Read commands until ``bye``, ``exit`` or end of input; Ctrl-C cancels a line."""
        with self._history():
            intro: str | None = self.intro
            while True:
                try:
                    self.cmdloop(intro)
                    return
                except KeyboardInterrupt:
                    # A long command (wait, cat_log) was interrupted: back to the prompt.
                    self._print("^C")
                    intro = ""

    @contextlib.contextmanager
    def _history(self) -> Iterator[None]:
        if not self.use_rawinput or self.history_file is None:
            yield
            return
        try:
            import readline
        except ImportError:  # Windows without pyreadline: the console still works
            yield
            return
        self._readline = readline
        readline.set_completer_delims(" \t\n")
        with contextlib.suppress(OSError):
            readline.read_history_file(self.history_file)
        readline.set_history_length(HISTORY_LENGTH)
        try:
            yield
        finally:
            try:
                readline.write_history_file(self.history_file)
            except OSError as exc:
                log.debug("could not save console history to %s: %s", self.history_file, exc)

    def _print(self, text: str = "") -> None:
        # Everything shown passes here: logs, errors and names from sites and
        # job code must not reach the terminal as escape sequences.
        self.stdout.write(fmt.printable(text) + "\n")
        self.stdout.flush()

    def emptyline(self) -> bool:
        # cmd's default repeats the last command: wrong after `shutdown` or `abort_job`.
        return False

    # --- dispatch ---------------------------------------------------------------

    def default(self, line: str) -> None:
        try:
            words = shlex.split(line)
        except ValueError as exc:
            self._print(f"Error: cannot parse the line: {exc}")
            return
        if not words:
            return
        name, args = words[0], words[1:]
        if name not in COMMANDS:
            self._print(f"Unknown command '{name}'. Type ? to list commands.")
            return
        self.execute(name, args)

    def execute(self, name: str, args: list[str]) -> Outcome | None:
        """Run one table command, print its answer (or the error) and the Done line."""
        command = get_command(name)
        start = time.perf_counter()
        outcome: Outcome | None = None
        try:
            parsed = parse_args(name, args)
            if command.confirm and not self._ask(f"{name} {' '.join(args)}".strip()):
                self._print("Cancelled.")
                return None
            # A wait draws its rounds on the console's own output.
            parsed.progress = RoundBar(self.stdout)
            outcome = command.run(self.session, parsed)
        except CommandUsageError as exc:
            self._print(describe_error(exc))
            return None
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one line per failure; the console goes on
            log.debug("command %s failed", name, exc_info=True)
            self._print(describe_error(exc))
        else:
            self._print(outcome.text)
            self._remember(name, outcome)
        self._print(done_line(time.perf_counter() - start))
        return outcome

    def _ask(self, what: str) -> bool:
        question = f"Are you sure you want to run '{what}'? (y/N) "
        if self._confirm is not None:
            return self._confirm(question)
        self.stdout.write(question)
        self.stdout.flush()
        answer = input() if self.use_rawinput else self.stdin.readline()
        return answer.strip().lower() in ("y", "yes")

    def _remember(self, name: str, outcome: Outcome) -> None:
        """Keep job ids and site names seen in answers, for tab completion."""
        result = outcome.result
        if name == "list_jobs" and isinstance(result, list):
            self._job_ids = [j.job_id for j in result if isinstance(j, JobSummary)]
        elif name in ("submit_job", "clone_job") and isinstance(outcome.data, dict):
            self._job_ids.append(str(outcome.data["job_id"]))
        elif name == "check_status" and isinstance(result, FederationStatus):
            self._sites = [s.name for s in result.sites]

    # --- built-ins: help and leaving ---------------------------------------------

    def do_help(self, arg: str) -> bool:
        """? [cmdName]: list commands, or show one command's usage."""
        name = arg.strip()
        if not name:
            width = max(len(c.usage) for c in COMMANDS.values())
            self._print('Commands (type "? cmdName" for details and roles):')
            for c in COMMANDS.values():
                self._print(f"  {c.usage.ljust(width)}  {c.summary}")
            self._print(f"  {'bye | exit'.ljust(width)}  Leave the console.")
            return False
        if name in _LEAVE:
            self._print(f"Usage: {name}\nLeave the console.")
            return False
        if name in ("?", "help"):
            self._print("Usage: ? [cmdName]\nList commands, or show the usage of one.")
            return False
        if name not in COMMANDS:
            self._print(f"Unknown command '{name}'. Type ? to list commands.")
            return False
        self._print(COMMANDS[name].describe())
        return False

    def do_bye(self, arg: str) -> bool:
        """bye: leave the console."""
        return True

    do_exit = do_bye
    do_quit = do_bye

    def do_EOF(self, arg: str) -> bool:  # noqa: N802 - the name cmd dispatches end of input to
        self._print()
        return True

    # --- completion ----------------------------------------------------------------

    def completenames(self, text: str, *ignored: Any) -> list[str]:
        names = [*COMMANDS, *_LEAVE]
        return [n + " " for n in names if n.startswith(text)]

    def completedefault(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        words = line[:begidx].split()
        if not words or words[0] not in COMMANDS:
            return []
        command = COMMANDS[words[0]]
        position = len(words)  # index of the word being completed, the command being 0
        if (command.takes_job_id and position == 1) or (
            command.name == "list_jobs" and words[-1] in ("-d", "--detail")
        ):
            return [j for j in self._known_job_ids() if j.startswith(text)]
        targets: list[str] = []
        if command.name in ("shutdown", "restart") and position == 1:
            targets = ["server", "all", *self._sites]
        elif (command.name, position) in (("sys_info", 1), ("cat_log", 2)):
            targets = ["server", *self._sites]
        elif command.name == "check_status":
            targets = ["server", "client"] if position == 1 else list(self._sites)
        return [t for t in targets if t.startswith(text)]

    def _known_job_ids(self) -> list[str]:
        if not self._job_ids:
            # First Tab on a job id: ask once; a failure just means no suggestions.
            try:
                self._job_ids = [j.job_id for j in self.session.list_jobs(limit=100)]
            except Exception:
                log.debug("could not list jobs for completion", exc_info=True)
        return self._job_ids


OpenSession = Callable[..., AdminSessionLike]


def _open_kit_session(
    kit_dir: Path, *, server_address: str | None, timeout: float
) -> AdminSessionLike:
    from shoal.admin.session import AdminSession

    return AdminSession.from_kit(kit_dir, server_address=server_address, timeout=timeout)


def login(
    kit_dir: Path,
    *,
    server_address: str | None = None,
    timeout: float = 30.0,
    out: IO[str] | None = None,
    open_session: OpenSession | None = None,
) -> AdminSessionLike:
    """Log in with the admin kit, printing the lines NVFlare operators know.

    ``open_session`` defaults to :meth:`AdminSession.from_kit`; errors propagate.
    """
    out = out or sys.stdout
    user = kit_user_name(kit_dir)
    if user:
        out.write(f"User Name: {user}\n")
    out.write("Trying to login, please wait ...\n")
    out.flush()
    opener = open_session or _open_kit_session
    session = opener(kit_dir, server_address=server_address, timeout=timeout)
    out.write(f"Logged into server at {session.server_address} with SSID: {session.session_id}\n")
    for line in session.certificate_warnings:
        out.write(f"WARNING: {line}\n")
    out.flush()
    return session
