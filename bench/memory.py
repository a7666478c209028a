"""Memory: peak RSS of the server and of a site for a 100 MiB model with 2, 8 and
32 sites (workload 3). It must not grow with the number of sites: the server
aggregates incrementally and streams every payload through files in chunks.

    python bench/memory.py [--quick] [--size 100M] [--sites 2,8,32] [--rounds 2]
                           [--workflow fedavg] [--param aggregator=median ...]

Server peak = VmHWM of the daemon + VmHWM of the job's workflow process;
site peak = the largest, over sites, of VmHWM of the site daemon + its job
worker. VmHWM is the kernel's high-water mark, sampled every 50 ms (so only
growth in a process's last 50 ms could be missed). File pages a process maps
and touches count in RSS (the site script reads its task memory-mapped).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    emit,
    federation,
    fmt_s,
    header,
    mib,
    round_times,
    run_job_sampled,
    table,
    write_job,
)
from transfer import parse_size  # noqa: E402


def measure(
    size: int,
    sites: int,
    rounds: int,
    tmp: Path,
    workflow: str = "fedavg",
    params: dict | None = None,
) -> dict:
    with federation(sites, timeout=300) as fed:
        job = write_job(
            tmp,
            name=f"mem-{sites}",
            num_rounds=rounds,
            model_bytes=size,
            num_arrays=8,
            min_clients=sites,
            workflow=workflow,
            params=params,
        )
        r, peaks = run_job_sampled(fed, job)
        site_totals = {s: peaks.total(s) for s in fed.layout.site_kits}
        worst = max(site_totals, key=site_totals.__getitem__)
        return {
            "sites": sites,
            "server_daemon": peaks.peak.get(("server", "self"), 0),
            "workflow": peaks.peak.get(("server", "child"), 0),
            "server": peaks.total("server"),
            "site": site_totals[worst],
            "site_daemon": peaks.peak.get((worst, "self"), 0),
            "site_worker": peaks.peak.get((worst, "child"), 0),
            "round_s": round_times(r.rounds),
        }


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="4 MiB model, 2 and 4 sites, 1 round")
    p.add_argument("--size", default="100M")
    p.add_argument("--sites", default="2,8,32")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workflow", default="fedavg", help="a registered workflow")
    p.add_argument(
        "--param", action="append", default=[], help="key=value: a workflow parameter (repeatable)"
    )
    args = p.parse_args(argv)
    params = dict(kv.split("=", 1) for kv in args.param)
    if args.quick:
        args.size, args.sites, args.rounds = "4M", "2,4", 1
    size = parse_size(args.size)
    what = args.workflow + "".join(f", {k}={v}" for k, v in params.items())
    header(f"memory: peak RSS of server and site, {mib(size)} model, {what}, by number of sites")
    results = []
    with tempfile.TemporaryDirectory(prefix="shoal-bench-jobs-") as tmp:
        for n in [int(x) for x in args.sites.split(",")]:
            emit(f"... {n} sites")
            try:
                res = measure(size, n, args.rounds, Path(tmp), args.workflow, params)
            except Exception as exc:
                emit(f"    FAILED: {type(exc).__name__}: {exc}")
                results.append({"sites": n, "error": f"{type(exc).__name__}: {exc}"})
                continue
            emit(f"    raw: {res}")
            results.append(res)
    emit()
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["sites"], "FAILED", r["error"], "", "", ""])
            continue
        rows.append(
            [
                r["sites"],
                f"{mib(r['server'])} ({r['server'] / size:.2f}x)",
                f"{mib(r['server_daemon'])} + {mib(r['workflow'])}",
                f"{mib(r['site'])} ({r['site'] / size:.2f}x)",
                f"{mib(r['site_daemon'])} + {mib(r['site_worker'])}",
                ", ".join(fmt_s(float(x)) for x in r["round_s"]),
            ]
        )
    table(
        rows,
        [
            "sites",
            "server peak RSS",
            "daemon + workflow",
            "site peak RSS (worst)",
            "site daemon + worker",
            "round times",
        ],
    )
    return results


if __name__ == "__main__":
    main()
