"""``shoal job``: start a job from a template, check a job offline.

shoal job new my-job --framework pt          # my-job/: job.yml, app/, README.md
shoal job check my-job                       # exit 0: OK; 1: every problem, one per line
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from shoal.jobs.scaffold import FRAMEWORKS

    parser = subparsers.add_parser(
        "job",
        help="start a job from a template, or check a job folder offline",
        description="Start a job from a template (new), or check one offline (check).",
    )
    sub = parser.add_subparsers(dest="job_command", required=True)

    new = sub.add_parser(
        "new",
        help="write a runnable job folder from a template",
        description=(
            "Write NAME/ (job.yml with comments, app/train.py, app/model.py, app/data.py, "
            "app/evaluate.py, README.md): a job that runs as written in `shoal simulate NAME "
            "-n 2`, on a small synthetic data set. An existing folder is never touched."
        ),
    )
    new.add_argument("name", metavar="NAME", help="the job's name, also the folder's")
    new.add_argument(
        "--framework",
        "-f",
        required=True,
        choices=tuple(FRAMEWORKS),
        help="; ".join(f"{k}: {v}" for k, v in FRAMEWORKS.items()),
    )
    new.add_argument("--workflow", default="fedavg", help="a registered workflow (default: fedavg)")
    new.add_argument(
        "--dir",
        type=Path,
        default=Path("."),
        metavar="PARENT",
        help="where to write NAME/ (default: the current folder)",
    )
    new.set_defaults(func=_new)

    check = sub.add_parser(
        "check",
        help="check a job folder or zip offline, listing every problem",
        description=(
            "Check a job folder or zip offline with the checks a submit makes (archive, "
            "job.yml, the workflow's parameters, the worker environment) and list every "
            "problem, one per line. Exit code 0: the job would be accepted; 1: it would not."
        ),
    )
    check.add_argument("job", type=Path, metavar="JOB", help="job folder (job.yml + app/) or zip")
    check.add_argument(
        "--sites",
        metavar="NAMES",
        help="the project's sites, comma-separated (e.g. site-1,site-2): also check the "
        "job's sites and min_clients against them, as the server does",
    )
    check.set_defaults(func=_check)


def _new(args: argparse.Namespace) -> int:
    from shoal.jobs.scaffold import new_job

    made = new_job(args.name, framework=args.framework, workflow=args.workflow, parent=args.dir)
    print(f"created {made.folder}/ ({args.framework}, {args.workflow}):")
    for rel in made.files:
        print(f"  {rel}")
    print(f"next: shoal job check {made.folder} && shoal simulate {made.folder} -n 2")
    return 0


def _check(args: argparse.Namespace) -> int:
    from shoal.jobs.check import check_job

    sites = None
    if args.sites is not None:
        sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    report = check_job(args.job, project_sites=sites)
    if report.ok:
        print(report.summary())
        return 0
    for problem in report.problems:
        print(problem)
    print(
        f"{report.path}: {len(report.problems)} problem(s); the job would be refused",
        file=sys.stderr,
    )
    return 1
