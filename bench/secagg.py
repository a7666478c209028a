"""Secure aggregation's cost (issue 22): seconds and bytes per round of the
``secagg`` workflow next to plain FedAvg, for 2, 8 and 32 sites at 1 MiB and
100 MiB, and the server's peak memory.

    python bench/secagg.py [--quick] [--sites 2,8,32] [--sizes 1M,100M] [--rounds 3]
                           [--neighbours 0] [--mode threads|processes] [--skip 32x100M]

Each configuration runs ``shoal simulate`` in its own process (threads mode
by default: every site a thread of that process, so its peak RSS is the
whole federation's; ``--mode processes`` puts the sites in two worker
processes, so the simulating process's peak is the server's: the workflow,
the running sum and the results it maps). Sites echo the global model (an
update of zeros): the figures are the protocol's and the runtime's cost,
not training's. Seconds per round: each round's ``duration_s`` in
metrics.jsonl (from its first task out to its model written; for secagg
that is all four stages), median of rounds 2..N. Bytes per round: the
payloads the sites received and sent (arrays of every task and result,
summed over the sites; the same for both modes), counted at the Client
API's backend; framing and TLS not included.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import MiB, emit, header, mib, proc_status, table, write_job  # noqa: E402
from transfer import parse_size  # noqa: E402


def one(workflow: str, sites: int, size: int, rounds: int, neighbours: int, mode: str) -> dict:
    """Run one configuration in this process; returns its figures."""
    import logging
    import os

    import numpy as np

    from shoal.sim import SimulatorConfig, simulate
    from shoal.sim.site import SimBackend

    logging.getLogger().setLevel(logging.WARNING)
    counted = {"down": 0, "up": 0}
    real_next, real_send = SimBackend.next_task, SimBackend.send

    def nbytes(model) -> int:  # type: ignore[no-untyped-def]
        arrays = [*model.params.values(), *model.extras.values()]
        return sum(int(np.asarray(a).nbytes) for a in arrays)

    def next_task(self):  # type: ignore[no-untyped-def]
        task = real_next(self)
        if task is not None:
            counted["down"] += nbytes(task)
        return task

    def send(self, model):  # type: ignore[no-untyped-def]
        counted["up"] += nbytes(model)
        real_send(self, model)

    SimBackend.next_task, SimBackend.send = next_task, send  # type: ignore[method-assign]
    params = {"stage_timeout_s": 3600}
    if workflow == "secagg":
        params.update({"clip_range": 0.1, "neighbours": neighbours})
    with tempfile.TemporaryDirectory(prefix="shoal-bench-secagg-") as tmp:
        job = write_job(
            Path(tmp),
            name="secaggbench",
            num_rounds=rounds,
            model_bytes=size,
            min_clients=sites,
            log=False,
            workflow=workflow,
            params=params if workflow == "secagg" else {},
        )
        start = proc_status(os.getpid()).get("VmHWM", 0)
        t0 = time.monotonic()
        res = simulate(
            SimulatorConfig(
                job_dir=job,
                num_sites=sites,
                workdir=Path(tmp) / "out",
                mode=mode,
                processes=2 if mode == "processes" else None,
            )
        )
        wall = time.monotonic() - t0
        if not res.ok:
            return {"error": res.failure_summary()[:500]}
        lines = [json.loads(x) for x in res.metrics_path.read_text().splitlines() if x.strip()]
    durations = [float(x["duration_s"]) for x in lines]
    # In processes mode the sites count in their workers, not here.
    return {
        "round_s": statistics.median(durations[1:] or durations),
        "rounds_s": durations,
        "wall_s": wall,
        "down_per_round": counted["down"] // rounds if mode == "threads" else None,
        "up_per_round": counted["up"] // rounds if mode == "threads" else None,
        "peak": proc_status(os.getpid()).get("VmHWM", 0),
        "start": start,
    }


def run(workflow: str, sites: int, size: int, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--one",
        json.dumps([workflow, sites, size, args.rounds, args.neighbours, args.mode]),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return {"error": (proc.stderr or proc.stdout)[-500:]}


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n / 1024:.1f} KiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 sites, 1 MiB, 2 rounds")
    parser.add_argument("--sites", default="2,8,32")
    parser.add_argument("--sizes", default="1M,100M")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--neighbours", type=int, default=0, help="SecAgg+ degree (0: all)")
    parser.add_argument("--mode", default="threads", choices=("threads", "processes"))
    parser.add_argument("--skip", default="", help="configurations left out, e.g. 32x100M")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(*json.loads(args.one))), flush=True)
        return
    if args.quick:
        args.sites, args.sizes, args.rounds = "2", "1M", 2
    header(f"secure aggregation against FedAvg, shoal simulate ({args.mode} mode)")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    rows = []
    for size_text in args.sizes.split(","):
        size = parse_size(size_text)
        for sites in (int(s) for s in args.sites.split(",")):
            if f"{sites}x{size_text}" in skip:
                rows.append([size_text, sites, "skipped (--skip)", "", "", "", "", "", ""])
                continue
            got = {w: run(w, sites, size, args) for w in ("fedavg", "secagg")}
            plain, sec = got["fedavg"], got["secagg"]
            if "error" in plain or "error" in sec:
                rows.append(
                    [
                        size_text,
                        sites,
                        "FAILED",
                        plain.get("error", ""),
                        sec.get("error", ""),
                        "",
                        "",
                        "",
                        "",
                    ]
                )
                continue
            rows.append(
                [
                    size_text,
                    sites,
                    f"{plain['round_s']:.3f} s",
                    f"{sec['round_s']:.3f} s",
                    f"{sec['round_s'] / max(plain['round_s'], 1e-9):.1f}x",
                    f"{_fmt_bytes(plain['down_per_round'])} / {_fmt_bytes(plain['up_per_round'])}",
                    f"{_fmt_bytes(sec['down_per_round'])} / {_fmt_bytes(sec['up_per_round'])}",
                    f"{mib(plain['peak'])} / {mib(sec['peak'])}",
                    f"{sec['wall_s']:.1f} s",
                ]
            )
            emit(
                f"  {size_text} {sites} sites: fedavg {plain['rounds_s']} secagg {sec['rounds_s']}"
            )
    emit()
    table(
        rows,
        [
            "model",
            "sites",
            "FedAvg s/round",
            "SecAgg s/round",
            "ratio",
            "FedAvg bytes/round down / up",
            "SecAgg bytes/round down / up",
            "peak RSS FedAvg / SecAgg",
            "SecAgg whole run",
        ],
    )


if __name__ == "__main__":
    main()
