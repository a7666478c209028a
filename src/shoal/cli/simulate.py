"""``shoal simulate JOB -n N``: run a job with N simulated sites on this machine."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from shoal.errors import JobFailedError

__all__ = ["register"]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from shoal.sim import DEFAULT_WORKDIR, PER_SITE_LOGS_MAX

    parser = subparsers.add_parser(
        "simulate",
        help="run a job with N simulated sites on this machine",
        description=(
            "Run a job folder with N simulated sites (site-1..site-N) in one machine: no "
            "certificates, no daemons. Results go to WORKDIR/<job>/: models/, metrics.jsonl, "
            f"tensorboard/, logs/server.log, logs/sites.log (and logs/site-N.log when N <= "
            f"{PER_SITE_LOGS_MAX})."
        ),
    )
    parser.add_argument("job", type=Path, help="job folder (job.yml + app/) or a zip of one")
    parser.add_argument(
        "-n",
        "--num-sites",
        type=_positive,
        default=None,
        help="number of sites (default: the job's sites list, else its min_clients)",
    )
    parser.add_argument(
        "-w", "--workdir", type=Path, default=DEFAULT_WORKDIR, help=f"default: {DEFAULT_WORKDIR}"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "-t",
        "--threads",
        type=_positive,
        metavar="T",
        help="sites run as threads of this process, at most T working at once "
        "(the default mode; T defaults to the number of CPUs)",
    )
    mode.add_argument(
        "-p",
        "--processes",
        type=_positive,
        metavar="P",
        help="sites run in P worker processes (for heavy frameworks such as TensorFlow)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from shoal.observe.progress import RoundBar
    from shoal.sim import RoundStats, SimulatorConfig, simulate
    from shoal.taskmeta import TRAIN

    # A terminal gets one updating line with a bar; a log one line per round.
    bar = RoundBar(sys.stdout)

    def progress(stats: RoundStats) -> None:
        shown = stats.global_metrics or stats.metrics
        if bar.tty and stats.task == TRAIN:
            bar.update(
                round=stats.round,
                total=stats.total_rounds,
                metrics=shown,
                label="global" if stats.global_metrics else "sites' mean",
                status=f"{stats.answered}/{stats.asked} sites, {stats.seconds:.1f}s",
            )
            return
        bar.close()
        total = f"/{stats.total_rounds}" if stats.total_rounds else ""
        label = "global " if stats.global_metrics else "sites' mean "
        metrics = " ".join(f"{k}={v:.4f}" for k, v in shown.items())
        # A task of an evaluation workflow or phase is named ("validate", ...).
        task = f"round {stats.round}{total}" if stats.task == TRAIN else stats.task
        print(
            f"{task}: {stats.answered}/{stats.asked} sites in "
            f"{stats.seconds:.1f}s" + (f"; {label}{metrics}" if metrics else ""),
            flush=True,
        )

    if not getattr(args, "verbose", False):
        # Progress is printed per round below; the workflow's per-site INFO
        # lines (thousands with -n 1000) stay in logs/server.log.
        for handler in logging.getLogger().handlers:
            if handler.level < logging.WARNING:
                handler.setLevel(logging.WARNING)
    config = SimulatorConfig(
        job_dir=args.job,
        num_sites=args.num_sites,
        workdir=args.workdir,
        mode="processes" if args.processes else "threads",
        threads=args.threads,
        processes=args.processes,
    )
    try:
        result = simulate(config, on_round=progress)
    finally:
        bar.close()
    rounds = len({r.round for r in result.rounds if r.task == TRAIN})
    others = sum(1 for r in result.rounds if r.task != TRAIN)
    print(
        f"{'finished' if result.ok else 'FAILED'}: {result.job_name}, {len(result.sites)} "
        f"site(s), {rounds} round(s)"
        + (f", {others} evaluation task(s)" if others else "")
        + f" in {result.seconds:.1f}s"
    )
    if result.final_metrics:
        print(
            "final global metrics: "
            + " ".join(f"{k}={v:.4f}" for k, v in result.final_metrics.items())
        )
    print(f"results: {result.run_dir} (models/, metrics.jsonl, tensorboard/, logs/)")
    if result.sites_left_early:
        print(f"note: {len(result.sites_left_early)} site(s) left before the end", file=sys.stderr)
    if not result.ok:
        raise JobFailedError(result.failure_summary())
    return 0
