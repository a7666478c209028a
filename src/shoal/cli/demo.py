"""`shoal demo`: the reference scenario end to end (what `make demo` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="provision, start server + 2 sites, submit hello-tf2, show progress and results",
    )
    p.add_argument("-w", "--workspace", type=Path, help="default: workspace/demo")
    p.add_argument("--job", type=Path, help="job folder (default: examples/hello-tf2)")
    p.add_argument("--min-accuracy", type=float, default=0.96, help="exit 1 below this")
    p.add_argument(
        "--dashboard-port",
        type=int,
        metavar="PORT",
        help="port of the admin's live dashboard (default $SHOAL_DASHBOARD_PORT or 8765; "
        "any free port if taken)",
    )
    p.add_argument("--no-dashboard", action="store_true", help="do not start the dashboard")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from shoal import jobstatus
    from shoal.demo import default_workspace, run_demo

    result = run_demo(
        args.workspace or default_workspace(),
        job=args.job,
        dashboard_port=-1 if args.no_dashboard else args.dashboard_port,
    )
    if result.status != jobstatus.COMPLETED:
        print(f"demo failed: job {result.job_id} ended {result.status}")
        return 1
    if args.job is None and (result.accuracy is None or result.accuracy < args.min_accuracy):
        print(f"demo failed: accuracy {result.accuracy} below {args.min_accuracy}")
        return 1
    print(f"demo passed: {result.status}, accuracy {result.accuracy}")
    return 0
