"""Round overhead: what one FedAvg round costs when the model is tiny and the sites
do no work, so every millisecond is the runtime's own (issue 7, workload 1).

    python bench/round_overhead.py [--quick] [--rounds 20] [--sites 2]

A real POC federation (server + 2 site daemons, mutual TLS on loopback) runs a
numpy job written into a temp dir: a 64-byte float32 model, a site script that
echoes the model back, no server evaluate hook. Prints

* seconds per round (metrics.jsonl ``duration_s``; round 1 apart: it also waits
  for the sites' job workers to start),
* submit -> first task at each site (the site script prints the wall time at
  which its first task arrived),
* submit -> FINISHED of a 5-round job, next to the job's own start-up: the
  import time of a job worker and of a workflow process (interpreter + imports),
  which no runtime can avoid without keeping processes warm.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    emit,
    federation,
    first_task_wall,
    fmt_s,
    header,
    round_times,
    run_job,
    stats,
    table,
    write_job,
)


def import_time(code: str, repeat: int = 3) -> float:
    """Median wall seconds of ``python -c code`` (a process's own start-up)."""
    times = []
    for _ in range(repeat):
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.monotonic() - t0)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="3 rounds + a 2-round job (smoke test)")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--short-rounds", type=int, default=5)
    p.add_argument("--sites", type=int, default=2)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.short_rounds = 3, 2
    header("round overhead: FedAvg, tiny model, near-zero local work, mTLS on loopback")
    out: dict = {}
    with (
        tempfile.TemporaryDirectory(prefix="shoal-bench-jobs-") as tmp,
        federation(args.sites) as fed,
    ):
        emit(f"federation: {args.sites} sites up in {fed.started_s:.2f} s")
        long_job = write_job(
            Path(tmp),
            name="overhead",
            num_rounds=args.rounds,
            model_bytes=64,
            min_clients=args.sites,
        )
        short_job = write_job(
            Path(tmp),
            name="overhead5",
            num_rounds=args.short_rounds,
            model_bytes=64,
            min_clients=args.sites,
        )
        # Warm-up job: first use of the page cache, the job store, etc.
        run_job(fed, short_job)
        r = run_job(fed, long_job)
        durs = round_times(r.rounds)
        steady = stats(durs[1:]) if len(durs) > 1 else stats(durs)
        firsts = {s: first_task_wall(fed, s, r.job_id) for s in fed.layout.site_kits}
        first_lat = [t - r.submit_wall for t in firsts.values() if t is not None]
        shorts = [run_job(fed, short_job) for _ in range(3)]
        short_fin = stats([j.submit_to_finished_s for j in shorts])
        short_first = []
        for j in shorts:
            ts = [first_task_wall(fed, s, j.job_id) for s in fed.layout.site_kits]
            short_first.append(max(t for t in ts if t is not None) - j.submit_wall)
        short_first_st = stats(short_first)
        tail = stats([j.submit_to_finished_s - f for j, f in zip(shorts, short_first, strict=True)])
    worker_import = import_time("import numpy, grpc, shoal.client, shoal.client.worker")
    workflow_import = import_time(
        "import numpy, shoal.server.job_process, shoal.workflows.fedavg, shoal.jobs"
    )
    emit()
    emit(f"## {args.rounds}-round job, {args.sites} sites, 64-byte model")
    rows = [
        ["round 1 (includes worker start)", fmt_s(durs[0]), "", ""],
        [
            f"rounds 2..{len(durs)} (pure runtime cost)",
            fmt_s(steady["median"]),
            fmt_s(steady["min"]),
            fmt_s(steady["p90"]),
        ],
        [
            "submit -> first task at a site",
            fmt_s(stats(first_lat)["median"]) if first_lat else "n/a",
            fmt_s(min(first_lat)) if first_lat else "",
            fmt_s(max(first_lat)) if first_lat else "",
        ],
    ]
    table(rows, ["figure", "median", "min", "p90 / max"])
    emit(f"raw round durations (s): {durs}")
    emit()
    emit(f"## {args.short_rounds}-round job, submit -> FINISHED (3 runs)")
    rows = [
        [
            "submit -> FINISHED",
            fmt_s(short_fin["median"]),
            fmt_s(short_fin["min"]),
            fmt_s(short_fin["max"]),
        ],
        [
            "  of which submit -> last site's first task",
            fmt_s(short_first_st["median"]),
            fmt_s(short_first_st["min"]),
            fmt_s(short_first_st["max"]),
        ],
        [
            "  of which first task -> FINISHED",
            fmt_s(tail["median"]),
            fmt_s(tail["min"]),
            fmt_s(tail["max"]),
        ],
        ["job start-up reference: worker imports (python -c)", fmt_s(worker_import), "", ""],
        ["job start-up reference: workflow imports (python -c)", fmt_s(workflow_import), "", ""],
    ]
    table(rows, ["figure", "median", "min", "max"])
    emit(f"raw submit->FINISHED (s): {[round(j.submit_to_finished_s, 3) for j in shorts]}")
    out.update(
        round_median_s=steady["median"],
        round_first_s=durs[0],
        first_task_s=stats(first_lat)["median"] if first_lat else None,
        finished_s=short_fin["median"],
        first_to_finished_s=tail["median"],
        worker_import_s=worker_import,
        workflow_import_s=workflow_import,
    )
    emit(
        f"target: tiny round <= 20 ms: {'MET' if steady['median'] <= 0.02 else 'NOT MET'} "
        f"({fmt_s(steady['median'])})"
    )
    return out


if __name__ == "__main__":
    main()
