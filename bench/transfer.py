"""Transfer: FedAvg rounds with a large float32 model (random data), against plain
grpcio over mutual TLS streaming the same bytes in the same run (workload 2),
with the peak RSS of the server and of a site (workload 3's 1 GiB target).

    python bench/transfer.py [--quick] [--sizes 100M,1G] [--rounds N] [--sites 2]

For each size: a POC federation (2 sites) runs a job whose sites echo the
model back; printed are seconds per round, the effective MB/s of the round
(2 sites x (down + up) x model size / round time), the per-transfer MB/s from
the server log (server -> site and site -> server), and plain grpcio:
2 client processes with the same site certificates each download and then
upload the same number of random bytes from a bare gRPC server process with
the server's certificate; same shape as a round, nothing else.

This VM's throughput drifts from minute to minute (one plain-grpcio sample
moved "round vs grpcio" between 40% and 91% on the same code), so plain grpcio
is sampled ``--baseline-samples`` times (default 5), interleaved with the
``--jobs`` shoal jobs (default 2) in the same federation, e.g. B B J B B J B;
the ratio is against the median sample, with the range the other samples give.
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

from _common import (  # noqa: E402
    GiB,
    MiB,
    cpu_per_round,
    cpu_seconds,
    emit,
    federation,
    fmt_s,
    header,
    mib,
    round_marks,
    round_times,
    run_job_sampled,
    stats,
    table,
    transfer_times,
    write_job,
)

HERE = Path(__file__).resolve().parent


def parse_size(text: str) -> int:
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1024, "M": MiB, "G": GiB}.get(t[-1:], 1)
    return int(float(t.rstrip("KMG")) * mult)


def grpc_baseline(fed, size: int, clients: int) -> dict:  # type: ignore[no-untyped-def]
    """Plain grpcio mTLS: ``clients`` processes each download then upload ``size`` bytes."""
    py = sys.executable
    script = str(HERE / "_grpc_baseline.py")
    server = subprocess.Popen(
        [py, script, "serve", "--kit", str(fed.layout.server_kit), "--size", str(size)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    procs = []
    try:
        port = int(server.stdout.readline())
        sites = list(fed.layout.site_kits.values())[:clients]
        for kit in sites:
            procs.append(
                subprocess.Popen(
                    [
                        py,
                        script,
                        "client",
                        "--kit",
                        str(kit),
                        "--port",
                        str(port),
                        "--size",
                        str(size),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for c in procs:
            assert c.stdout.readline().strip() == "ready"
        t0, server_cpu0 = time.monotonic(), cpu_seconds(server.pid)
        for c in procs:
            c.stdin.write("go\n")
            c.stdin.flush()
        results = [json.loads(c.stdout.readline()) for c in procs]
        wall = time.monotonic() - t0
        server_cpu = cpu_seconds(server.pid) - server_cpu0
        for c in procs:
            c.wait(timeout=60)
    finally:
        for c in procs:
            if c.poll() is None:
                c.kill()
        server.stdin.close()
        server.wait(timeout=30)
    return {
        "wall_s": wall,
        "down_s": [r["down_s"] for r in results],
        "up_s": [r["up_s"] for r in results],
        "mbps": 2 * clients * size / wall / 1e6,
        "cpu_server_s": server_cpu,
        "cpu_clients_s": sum(r["cpu_s"] for r in results),
    }


def schedule(jobs: int, samples: int) -> list[str]:
    """The order of the shoal jobs ("J") and the plain-grpcio samples ("B"):
    the samples spread as evenly as they go over the gaps before, between and
    after the jobs, earlier gaps first (5 samples, 2 jobs: B B J B B J B)."""
    gaps = jobs + 1
    per_gap = [samples // gaps + (i < samples % gaps) for i in range(gaps)]
    order: list[str] = []
    for i, n in enumerate(per_gap):
        order += ["B"] * n
        if i < jobs:
            order.append("J")
    return order


def run_size(size: int, rounds: int, sites: int, tmp: Path, jobs: int, samples: int) -> dict:
    with federation(sites) as fed:
        job = write_job(
            tmp,
            name=f"transfer-{size}",
            num_rounds=rounds,
            model_bytes=size,
            num_arrays=8,
            min_clients=sites,
        )
        groups = {
            "server": [fed.pid("server1")],
            "sites": [fed.pid(s) for s in fed.layout.site_kits],
        }
        runs, bases = [], []
        for step in schedule(jobs, samples):
            if step == "B":
                # Plain grpcio on the same kits, between the jobs, same run.
                bases.append(grpc_baseline(fed, size, sites))
                continue
            with round_marks(fed.server_dir / "jobs", groups) as marks:
                r, peaks = run_job_sampled(fed, job)
            runs.append(
                {
                    "run": r,
                    # Rounds 2..N, as the times: round 1 also starts the job workers.
                    "cpu": cpu_per_round(marks, first=1) or {},
                    "xfer": transfer_times(fed, r.job_id),
                    "server_peak": peaks.total("server"),
                    "server_daemon_peak": peaks.peak.get(("server", "self"), 0),
                    "workflow_peak": peaks.peak.get(("server", "child"), 0),
                    "site_peak": max(peaks.total(s) for s in fed.layout.site_kits),
                }
            )
    # The model on the wire is the safetensors file: header + data.
    wire = size + 1024
    per_job = [round_times(x["run"].rounds) for x in runs]
    # Round 1 also waits for the sites' job workers to start: leave it out.
    steady = [t for durs in per_job for t in (durs[1:] if len(durs) > 2 else durs)]
    median = stats(steady)["median"]
    cpus = [x["cpu"] for x in runs if x["cpu"]]
    walls = stats([b["wall_s"] for b in bases])
    base = {
        "samples": bases,
        # The median sample's wall time; its MB/s and the others' range.
        "wall_s": walls["median"],
        "mbps": 2 * sites * size / walls["median"] / 1e6,
        "mbps_min": 2 * sites * size / walls["max"] / 1e6,
        "mbps_max": 2 * sites * size / walls["min"] / 1e6,
        "down_s": [t for b in bases for t in b["down_s"]],
        "up_s": [t for b in bases for t in b["up_s"]],
        "cpu_server_s": stats([b["cpu_server_s"] for b in bases])["median"],
        "cpu_clients_s": stats([b["cpu_clients_s"] for b in bases])["median"],
    }
    return {
        "size": size,
        "order": " ".join(schedule(jobs, samples)),
        "rounds": per_job,
        "round_median_s": median,
        "round_mbps": 2 * sites * wire / median / 1e6,
        "down_mbps": [wire / t / 1e6 for x in runs for t in x["xfer"]["down"] if t > 0],
        "up_mbps": [wire / t / 1e6 for x in runs for t in x["xfer"]["up"] if t > 0],
        "submit_to_finished_s": [x["run"].submit_to_finished_s for x in runs],
        "base": base,
        "server_peak": max(x["server_peak"] for x in runs),
        "server_daemon_peak": max(x["server_daemon_peak"] for x in runs),
        "workflow_peak": max(x["workflow_peak"] for x in runs),
        "site_peak": max(x["site_peak"] for x in runs),
        # Mean over the jobs of each job's CPU seconds per round.
        "cpu_server_s": statistics.fmean(c["server"] for c in cpus) if cpus else None,
        "cpu_sites_s": statistics.fmean(c["sites"] for c in cpus) if cpus else None,
    }


def _cpu(r: dict) -> str:
    b = r["base"]
    grpcio = f" (grpcio {b['cpu_server_s']:.2f} / {b['cpu_clients_s']:.2f})"
    if r.get("cpu_server_s") is None:
        return "n/a" + grpcio
    return f"{r['cpu_server_s']:.2f} / {r['cpu_sites_s']:.2f} s" + grpcio


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="one 8 MiB size, 2 rounds")
    p.add_argument("--sizes", default="100M,1G")
    p.add_argument(
        "--rounds",
        type=int,
        help="default 8 below 1 GiB (a job past its first keep_models rounds, when the "
        "server's page cache stops growing), 4 from 1 GiB",
    )
    p.add_argument("--sites", type=int, default=2)
    p.add_argument(
        "--jobs", type=int, default=2, help="shoal jobs per size, in one federation (default 2)"
    )
    p.add_argument(
        "--baseline-samples",
        type=int,
        default=5,
        help="plain grpcio samples per size, interleaved with the jobs (default 5)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.rounds, args.jobs, args.baseline_samples = "8M", 2, 1, 2
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    header("transfer: FedAvg rounds with a large random float32 model vs plain grpcio mTLS")
    results = []
    with tempfile.TemporaryDirectory(prefix="shoal-bench-jobs-") as tmp:
        for size in sizes:
            rounds = args.rounds or (8 if size < GiB else 4)
            emit(
                f"... {mib(size)} model, {args.jobs} jobs of {rounds} rounds, {args.sites} sites, "
                f"{args.baseline_samples} plain grpcio samples: "
                + " ".join(schedule(args.jobs, args.baseline_samples))
            )
            try:
                res = run_size(
                    size, rounds, args.sites, Path(tmp), args.jobs, args.baseline_samples
                )
            except Exception as exc:  # report and go on with the next size
                emit(f"    FAILED: {type(exc).__name__}: {exc}")
                results.append({"size": size, "error": f"{type(exc).__name__}: {exc}"})
                continue
            results.append(res)
            emit(f"    raw round durations (s): {res['rounds']}")
            emit(
                f"    raw per-transfer MB/s down {[round(x) for x in res['down_mbps']]} "
                f"up {[round(x) for x in res['up_mbps']]}"
            )
            for i, b in enumerate(res["base"]["samples"], 1):
                emit(f"    raw plain grpcio sample {i}: {json.dumps(b)}")
    emit()
    rows = []
    for r in results:
        if "error" in r:
            rows.append([mib(r["size"]), "FAILED", r["error"], *[""] * 8])
            continue
        d, u = stats(r["down_mbps"]), stats(r["up_mbps"])
        b = r["base"]
        ratio = r["round_mbps"] / b["mbps"]
        # The samples' range: against the fastest and the slowest plain grpcio.
        lo, hi = r["round_mbps"] / b["mbps_max"], r["round_mbps"] / b["mbps_min"]
        # Plain grpcio's transfers one by one, the same measure as shoal's.
        bd = stats([r["size"] / t / 1e6 for t in r["base"]["down_s"]])["median"]
        bu = stats([r["size"] / t / 1e6 for t in r["base"]["up_s"]])["median"]
        rows.append(
            [
                mib(r["size"]),
                fmt_s(r["round_median_s"]),
                f"{r['round_mbps']:.0f}",
                f"{d.get('median', 0):.0f} / {u.get('median', 0):.0f}",
                f"{b['mbps']:.0f} ({fmt_s(b['wall_s'])}; {len(b['samples'])} samples "
                f"{b['mbps_min']:.0f}-{b['mbps_max']:.0f})",
                f"{ratio:.0%} ({lo:.0%}-{hi:.0%})",
                f"{bd:.0f} / {bu:.0f}",
                f"{d.get('median', 0) / bd:.0%} / {u.get('median', 0) / bu:.0%}",
                _cpu(r),
                f"{mib(r['server_peak'])} ({r['server_peak'] / r['size']:.1f}x)",
                f"{mib(r['site_peak'])} ({r['site_peak'] / r['size']:.1f}x)",
            ]
        )
    table(
        rows,
        [
            "model",
            "s/round",
            "round MB/s",
            "per-transfer MB/s down/up",
            "plain grpcio MB/s (same shape): median (wall; samples min-max)",
            "round vs grpcio: median (range)",
            "plain grpcio per-transfer MB/s down/up",
            "per transfer vs grpcio down/up",
            "CPU per round server / sites (plain grpcio, same bytes)",
            "server peak RSS",
            "site peak RSS",
        ],
    )
    emit(
        f"round MB/s = {args.sites} sites x (down + up) x model bytes / median round time (round 1 left out when there are 3+); "
        "rounds 2..N of every job pooled; "
        "round vs grpcio = round MB/s / the median plain grpcio sample's MB/s (range: against the "
        "fastest and the slowest sample); per transfer = model bytes / one transfer's time "
        "(shoal: server log; grpcio: each client's download and upload), medians; "
        "CPU per round = utime + stime of the server (daemon + workflow) and of all sites "
        "(daemons + job workers) from the end of round 1 to the end of the last, per round, "
        "mean over the jobs, and plain grpcio's server and clients over its transfers, median sample; "
        "peak RSS = daemon + its job process (VmHWM, sampled every 50 ms)"
    )
    return results


if __name__ == "__main__":
    main()
