"""The `shoal` command: one module per sub-command, registered here.

Each sub-command module exposes ``register(subparsers)`` which adds its parser
and sets ``func`` (a callable taking the parsed args and returning an exit
code). Library code raises ShoalError; only this layer turns it into a message
and an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from shoal import __version__
from shoal.errors import ConfigError, NotAuthorizedError, NotFoundError, ShoalError

#: Sub-command modules, in the order `shoal --help` lists them.
COMMANDS: tuple[str, ...] = (
    "shoal.cli.provision",
    "shoal.cli.server",
    "shoal.cli.client",
    "shoal.cli.admin",
    "shoal.cli.dashboard",
    "shoal.cli.poc",
    "shoal.cli.job",
    "shoal.cli.simulate",
    "shoal.cli.deploy",
    "shoal.cli.demo",
    "shoal.cli.audit",
)

#: Exit codes: 0 ok, 1 failure, 2 usage/config error, 3 not authorized, 4 not found.
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_AUTHORIZED = 3
EXIT_NOT_FOUND = 4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoal", description="shoal: federated learning over mutual-TLS gRPC"
    )
    parser.add_argument("--version", action="version", version=f"shoal {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # Sub-commands land one by one; a missing one must not break the rest.
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.WARNING,
            format="%(asctime)s - %(name)s - %(levelname)s - %(message)s",
        )
    try:
        return int(args.func(args) or 0)
    except NotAuthorizedError as exc:
        print(f"error: not authorized: {exc}", file=sys.stderr)
        return EXIT_NOT_AUTHORIZED
    except NotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ShoalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
