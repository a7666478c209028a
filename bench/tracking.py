"""Experiment tracking's cost: seconds per round, whole-run time and peak
memory of a simulated job with tracking off (TensorBoard only, the default),
MLflow on (a SQLite store in the run folder), and MLflow + W&B (offline).

    python bench/tracking.py [--quick] [--sites 10] [--rounds 30] [--metrics 10]

Each configuration runs ``shoal.sim.simulate`` in its own process, so its
peak RSS (VmHWM, read by the process itself at the end) and its imports are
its own. Each site reports ``--metrics`` metrics a round, so a round logs
(sites + 1) x metrics scalars. Seconds per round: from one round's task going
out to the next one's (metrics.jsonl ``started``), which includes the
previous round's commit, where the trackers are called. The whole run
includes importing MLflow/W&B and opening their runs (once per job).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    emit,
    fmt_s,
    header,
    mib,
    proc_status,
    round_times,
    stats,
    table,
    write_job,
)

CONFIGS = {
    "off": "",
    "mlflow": "tracking:\n  mlflow: {tracking_uri: mlflow.db, experiment: bench}\n",
    "mlflow+wandb": (
        "tracking:\n  mlflow: {tracking_uri: mlflow.db, experiment: bench}\n"
        "  wandb: {project: bench, mode: offline}\n"
    ),
}

#: A train.py that reports ``n`` metrics a round besides training.
_TRAIN = """\
import numpy as np
import shoal.client as fl

fl.init()
while fl.is_running():
    task = fl.receive()
    params = {{k: v + 0.01 for k, v in task.params.items()}}
    metrics = {{f"m{{i}}": float(np.random.rand()) for i in range({n})}}
    fl.send(fl.FLModel(params=params, metrics=metrics, num_examples=10))
"""


def one(config: str, sites: int, rounds: int, n_metrics: int) -> dict:
    """Run one configuration in this process; returns its figures."""
    import logging
    import os

    from shoal.sim import SimulatorConfig, simulate

    logging.getLogger().setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="shoal-bench-track-") as tmp:
        job = write_job(
            Path(tmp), name="trackbench", num_rounds=rounds, model_bytes=4096, log=False
        )
        (job / "app" / "train.py").write_text(_TRAIN.format(n=n_metrics))
        yml = job / "job.yml"
        yml.write_text(yml.read_text() + CONFIGS[config])
        t0 = time.monotonic()
        res = simulate(SimulatorConfig(job_dir=job, num_sites=sites, workdir=Path(tmp) / "out"))
        wall = time.monotonic() - t0
        metrics = [json.loads(x) for x in res.metrics_path.read_text().splitlines() if x.strip()]
        tracked = (res.run_dir / "mlflow.db").exists()
        return {
            "config": config,
            "ok": res.ok,
            "error": (res.error or "")[-300:] or None,
            "mlflow_store": tracked,
            "round_s": round_times(metrics),
            "wall_s": wall,
            "peak_rss": proc_status(os.getpid()).get("VmHWM", 0),
        }


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="5 sites, 10 rounds")
    p.add_argument("--sites", type=int, default=10)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--metrics", type=int, default=10, help="metrics each site reports a round")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        c, s, r, m = args.one
        print(json.dumps(one(c, int(s), int(r), int(m))))
        return []
    if args.quick:
        args.sites, args.rounds = 5, 10
    header(
        f"tracking: {args.sites} simulated sites, {args.rounds} rounds, "
        f"{args.metrics} metrics per site per round, off / MLflow / MLflow + W&B"
    )
    results = []
    for config in args.configs.split(","):
        emit(f"... {config}")
        cmd = [sys.executable, __file__, "--one", config, str(args.sites), str(args.rounds)]
        proc = subprocess.run(
            [*cmd, str(args.metrics)], capture_output=True, text=True, timeout=3600
        )
        if proc.returncode != 0:
            err = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
            emit(f"    FAILED (exit {proc.returncode}): {err}")
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        emit(f"    raw: {res}")
        results.append(res)
    emit()
    base = next((r for r in results if r["config"] == "off"), None)
    rows = []
    for r in results:
        st = stats(r["round_s"])
        extra = ""
        if base is not None and r is not base:
            extra = fmt_s(st["median"] - stats(base["round_s"])["median"])
        rows.append(
            [
                r["config"],
                "ok" if r["ok"] else f"FAILED {r['error']}",
                fmt_s(st["median"]),
                fmt_s(st["max"]),
                extra,
                fmt_s(r["wall_s"]),
                mib(r["peak_rss"]),
            ]
        )
    table(
        rows,
        ["tracking", "job", "s/round (median)", "s/round (max)", "vs off", "whole run", "peak RSS"],
    )
    return results


if __name__ == "__main__":
    main()
