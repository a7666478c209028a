"""Simulator: 100, 1000 and 10,000 simulated sites with a tiny model, all sampled
and 10% sampled (``sample_fraction``), 3 rounds: seconds per round and peak
memory (workload 5).

    python bench/simulator.py [--quick] [--sites 100,1000,10000] [--rounds 3]

Each configuration runs ``shoal.sim.simulate`` (threads mode, the default) in
its own process, so its peak RSS (VmHWM, read by the process itself at the
end) is its own. Seconds per round: from one round's task going out to the
next one's (metrics.jsonl ``started``; so 3 rounds give 2 figures); the whole
simulation's wall time is printed too (it includes starting every site
thread).
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


def one(sites: int, fraction: float, rounds: int) -> dict:
    """Run one configuration in this process; returns its figures."""
    import logging

    from shoal.sim import SimulatorConfig, simulate

    logging.getLogger().setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="shoal-bench-sim-") as tmp:
        job = write_job(
            Path(tmp),
            name="simbench",
            num_rounds=rounds,
            model_bytes=64,
            sample_fraction=fraction,
            log=False,
        )
        t0 = time.monotonic()
        res = simulate(SimulatorConfig(job_dir=job, num_sites=sites, workdir=Path(tmp) / "out"))
        wall = time.monotonic() - t0
        metrics = [json.loads(x) for x in res.metrics_path.read_text().splitlines() if x.strip()]
        return {
            "sites": sites,
            "fraction": fraction,
            "ok": res.ok,
            "error": (res.error or "")[-300:] or None,
            "round_s": round_times(metrics),
            "asked": [r.asked for r in res.rounds],
            "wall_s": wall,
            "peak_rss": proc_status(__import__("os").getpid()).get("VmHWM", 0),
        }


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="20 and 100 sites, 2 rounds")
    p.add_argument("--sites", default="100,1000,10000")
    p.add_argument("--fractions", default="1.0,0.1")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--one", nargs=3, metavar=("SITES", "FRACTION", "ROUNDS"), help=argparse.SUPPRESS
    )
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(int(args.one[0]), float(args.one[1]), int(args.one[2]))))
        return []
    if args.quick:
        args.sites, args.rounds = "20,100", 2
    header("simulator: tiny model, N simulated sites (threads), all / 10% sampled")
    results = []
    for n in [int(x) for x in args.sites.split(",")]:
        for f in [float(x) for x in args.fractions.split(",")]:
            emit(f"... {n} sites, sample_fraction {f}")
            proc = subprocess.run(
                [sys.executable, __file__, "--one", str(n), str(f), str(args.rounds)],
                capture_output=True,
                text=True,
                timeout=3600,
            )
            if proc.returncode != 0:
                err = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
                emit(f"    FAILED (exit {proc.returncode}): {err}")
                results.append({"sites": n, "fraction": f, "failed": " ".join(err)})
                continue
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            emit(f"    raw: {res}")
            results.append(res)
    emit()
    rows = []
    for r in results:
        if "failed" in r or not r.get("ok"):
            rows.append(
                [r["sites"], r["fraction"], "FAILED", r.get("failed") or r.get("error"), "", ""]
            )
            continue
        st = stats(r["round_s"])
        rows.append(
            [
                r["sites"],
                f"{r['fraction']:.0%}",
                fmt_s(st["median"]),
                fmt_s(st["max"]),
                fmt_s(r["wall_s"]),
                mib(r["peak_rss"]),
            ]
        )
    table(
        rows,
        ["sites", "sampled", "s/round (median)", "s/round (max)", "whole simulation", "peak RSS"],
    )
    return results


if __name__ == "__main__":
    main()
