"""``shoal admin``: the admin console, or one admin command run non-interactively.

    shoal admin --kit prod_00/admin@nvidia.com                 # interactive console
    shoal admin --kit KIT list_jobs -s RUNNING                  # one command, a table
    shoal admin --kit KIT --json submit_job hello-tf2           # one JSON document
    shoal admin --kit KIT wait JOB_ID --timeout 600             # exit 0 iff COMPLETED
    shoal admin --kit KIT submit_job hello-tf2 --wait           # a round progress bar

Exit codes (shoal.cli.app): 0 ok, 1 failure, 2 usage error or job refused,
3 not authorized, 4 not found.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from shoal.admin import console
from shoal.admin.commands import (
    COMMANDS,
    AdminSessionLike,
    Outcome,
    describe_error,
    get_command,
    parse_args,
    run_command,
)
from shoal.admin.format import printable
from shoal.cli.app import EXIT_FAILURE, EXIT_NOT_AUTHORIZED, EXIT_NOT_FOUND, EXIT_USAGE
from shoal.errors import ConfigError, NotAuthorizedError, NotFoundError
from shoal.observe.progress import RoundBar

EXIT_OK = 0

#: Environment variables read when the flags are not given.
ENV_KIT = "SHOAL_ADMIN_KIT"
ENV_SERVER = "SHOAL_ADMIN_ADDRESS"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "admin",
        help="admin console, or run one admin command (list_jobs, submit_job, ...)",
        description=(
            "Log in to the server with an admin startup kit. Without COMMAND, start the "
            "interactive console; with COMMAND, run it and exit "
            "(0 ok, 1 failure, 2 usage error or job refused, 3 not authorized, 4 not found)."
        ),
        epilog="commands: " + ", ".join(COMMANDS) + "  (see docs/admin.md)",
    )
    add_kit_options(parser)
    parser.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="per-call timeout (default 30)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document on stdout (with COMMAND)"
    )
    parser.add_argument(
        "admin_command", nargs="?", metavar="COMMAND", help="run this command and exit"
    )
    parser.add_argument(
        "admin_args", nargs=argparse.REMAINDER, metavar="ARGS", help="its arguments (COMMAND -h)"
    )
    parser.set_defaults(func=run)


def add_kit_options(parser: argparse.ArgumentParser) -> None:
    """``--kit`` and ``--server``: which admin, which server (``shoal dashboard`` too)."""
    parser.add_argument(
        "--kit",
        type=Path,
        metavar="DIR",
        help=f"the admin's startup kit folder (default: ${ENV_KIT}, or the current folder)",
    )
    parser.add_argument(
        "--server",
        metavar="HOST:PORT",
        help=f"dial this address instead of the kit's (default: ${ENV_SERVER}); "
        "the server's certificate name is still checked",
    )


def exit_code_for(exc: BaseException) -> int:
    """The exit code for an error, as shoal.cli.app maps them."""
    if isinstance(exc, NotAuthorizedError):
        return EXIT_NOT_AUTHORIZED
    if isinstance(exc, NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, ConfigError):  # includes usage errors and JobValidationError
        return EXIT_USAGE
    return EXIT_FAILURE


def find_kit(kit: Path | None) -> Path:
    """The kit folder: ``--kit``, ``$SHOAL_ADMIN_KIT``, or the current folder.

    Accepts the kit's ``startup/`` folder too, where NVFlare users ``cd`` to run
    ``fl_admin.sh``.
    """
    candidate = (kit or Path(os.environ.get(ENV_KIT) or ".")).absolute()
    if not (candidate / "startup").is_dir() and (candidate / "fed_admin.json").is_file():
        candidate = candidate.parent
    if not (candidate / "startup" / "fed_admin.json").is_file():
        raise ConfigError(
            f"{candidate} is not an admin startup kit (no startup/fed_admin.json); "
            "pass --kit DIR or set " + ENV_KIT
        )
    return candidate


def _open_session(kit: Path, *, server_address: str | None, timeout: float) -> AdminSessionLike:
    from shoal.admin.session import AdminSession

    return AdminSession.from_kit(kit, server_address=server_address, timeout=timeout)


def run(args: argparse.Namespace) -> int:
    # `--json` is accepted after COMMAND too: REMAINDER would otherwise pass it on.
    rest = list(args.admin_args or [])
    as_json = args.json or "--json" in rest
    rest = [a for a in rest if a != "--json"]
    name = args.admin_command
    server = args.server or os.environ.get(ENV_SERVER) or None

    if name is None:
        if as_json:
            return _fail(ConfigError("--json needs a COMMAND"), None, as_json=False)
        return _interactive(args.kit, server, args.timeout)

    # Check the command line before dialling: a typo should not cost a login.
    try:
        command = get_command(name)
        if "-h" in rest or "--help" in rest:
            print(command.describe())
            return EXIT_OK
        parse_args(name, rest)
        kit = find_kit(args.kit)
    except ConfigError as exc:
        return _fail(exc, name, as_json=as_json)

    try:
        session = _open_session(kit, server_address=server, timeout=args.timeout)
    except Exception as exc:
        return _fail(exc, name, as_json=as_json)
    # A wait draws its rounds on stderr (stdout keeps the answer); --json
    # prints the one JSON document and nothing else.
    progress = None if as_json else RoundBar(sys.stderr)
    try:
        outcome = run_command(session, name, rest, progress=progress)
    except Exception as exc:
        return _fail(exc, name, as_json=as_json)
    finally:
        session.close()
    return _succeed(outcome, name, as_json=as_json)


def _succeed(outcome: Outcome, name: str, *, as_json: bool) -> int:
    code = EXIT_OK if outcome.ok else EXIT_FAILURE
    if as_json:
        _print_json({"command": name, "ok": outcome.ok, "result": outcome.data})
    else:
        print(printable(outcome.text))
    return code


def _fail(exc: Exception, name: str | None, *, as_json: bool) -> int:
    code = exit_code_for(exc)
    if as_json:
        _print_json(
            {
                "command": name,
                "ok": False,
                "error": {"type": type(exc).__name__, "message": str(exc), "exit_code": code},
            }
        )
    print(printable(describe_error(exc)), file=sys.stderr)
    return code


def _print_json(document: dict[str, Any]) -> None:
    json.dump(document, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _interactive(kit_arg: Path | None, server: str | None, timeout: float) -> int:
    try:
        kit = find_kit(kit_arg)
    except ConfigError as exc:
        return _fail(exc, None, as_json=False)
    try:
        session = console.login(
            kit, server_address=server, timeout=timeout, open_session=_open_session
        )
    except Exception as exc:
        print(printable(describe_error(exc)), file=sys.stderr)
        return exit_code_for(exc)
    try:
        console.AdminConsole(session, history_file=console.history_path(kit)).run()
    finally:
        session.close()
    return EXIT_OK
