"""``shoal dashboard``: a live web view of the federation for one admin.

shoal dashboard --kit prod_00/admin@nvidia.com          # http://127.0.0.1:8765/?token=...
cd prod_00/admin@nvidia.com/startup && shoal dashboard   # the kit of this folder
shoal dashboard --kit KIT --host 0.0.0.0 --allow-remote  # beyond loopback, with a warning
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from shoal.errors import ConfigError

__all__ = ["MISSING_EXTRA", "register"]

#: What to say when the dashboard's libraries are not installed.
MISSING_EXTRA = (
    "the dashboard needs the [dashboard] extra: pip install 'shoal[dashboard]' "
    "(or `make venv`, which installs it)"
)


def register(sub: Any) -> None:
    from shoal.cli.admin import add_kit_options

    p = sub.add_parser(
        "dashboard",
        help="live web view of the federation and its jobs, for one admin",
        description=(
            "Serve a web dashboard that talks to the server with an admin startup kit's "
            "certificate: sites, jobs, live round metrics; submit, abort, clone, download, "
            "delete as that admin's role allows. Listens on 127.0.0.1 and prints a URL with "
            "a login token."
        ),
    )
    add_kit_options(p)
    p.add_argument("--port", type=int, default=None, help="port to listen on (default 8765)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow --host beyond loopback: anyone with the URL acts as this admin",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from shoal.cli.admin import ENV_SERVER, find_kit

    try:
        from shoal.web.serve import DEFAULT_PORT, DashboardConfig, RunningDashboard
    except ModuleNotFoundError as exc:
        raise ConfigError(f"{MISSING_EXTRA} ({exc.name} is missing)") from None
    config = DashboardConfig(
        kit=find_kit(args.kit),
        host=args.host,
        port=DEFAULT_PORT if args.port is None else args.port,
        allow_remote=args.allow_remote,
        server_address=args.server or os.environ.get(ENV_SERVER) or None,
    )
    dashboard = RunningDashboard(config)
    if dashboard.warning:
        print(dashboard.warning, file=sys.stderr, flush=True)
    print(
        f"shoal dashboard for {dashboard.session.user} ({dashboard.session.role}) "
        f"on {dashboard.session.server_name} at {dashboard.session.server_address}",
        flush=True,
    )
    print(f"open {dashboard.url}", flush=True)
    print("Ctrl-C stops it.", flush=True)
    dashboard.serve_forever()
    return 0
