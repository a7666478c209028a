"""POC federation start and stop, shoal next to NVIDIA FLARE, measured in one run.

shoal: ``shoal poc start`` returns once the server listens and every site is
connected over mutual TLS; ``shoal poc stop`` returns once every process is
gone. NVIDIA FLARE (its own venv, ``bash bench/peers/setup.sh nvflare``):
``nvflare poc start -ex admin@nvidia.com`` waits for the server and clients
to be ready (its default), ``nvflare poc stop`` stops them; we then wait until
no process of its POC workspace is left, which is what "stopped" means.

    python bench/poc_startup.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, emit, fmt_s, header, stats, table  # noqa: E402

NVFLARE = ROOT / "bench" / "peers" / "nvflare" / "venv" / "bin" / "nvflare"


def _procs_mentioning(text: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            out.append(int(entry.name))
    return out


def _wait_gone(text: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while _procs_mentioning(text) and time.monotonic() < deadline:
        time.sleep(0.05)


def shoal_once(tmp: Path) -> tuple[float, float]:
    ws = tmp / "shoal-poc"
    shoal = [sys.executable, "-m", "shoal", "poc", "-w", str(ws)]
    subprocess.run([*shoal, "prepare", "-n", "2"], check=True, capture_output=True)
    t0 = time.monotonic()
    subprocess.run([*shoal, "start"], check=True, capture_output=True)
    start = time.monotonic() - t0
    t0 = time.monotonic()
    subprocess.run([*shoal, "stop"], check=True, capture_output=True)
    _wait_gone(str(ws))
    stop = time.monotonic() - t0
    shutil.rmtree(ws)
    return start, stop


def nvflare_once(tmp: Path) -> tuple[float, float]:
    ws = tmp / "nvflare-poc"
    env = {**os.environ, "NVFLARE_POC_WORKSPACE": str(ws)}
    run = lambda *a: subprocess.run(  # noqa: E731
        [str(NVFLARE), "poc", *a], env=env, capture_output=True, text=True, input="y\n"
    )
    prep = run("prepare", "-n", "2")
    if prep.returncode != 0:
        raise RuntimeError(f"nvflare poc prepare failed: {prep.stdout[-500:]}{prep.stderr[-500:]}")
    t0 = time.monotonic()
    started = run("start", "-ex", "admin@nvidia.com")
    start = time.monotonic() - t0
    if started.returncode != 0:
        raise RuntimeError(
            f"nvflare poc start failed: {started.stdout[-800:]}{started.stderr[-800:]}"
        )
    t0 = time.monotonic()
    run("stop")
    _wait_gone(str(ws))
    stop = time.monotonic() - t0
    run("clean")
    shutil.rmtree(ws, ignore_errors=True)
    return start, stop


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="one run, shoal only")
    args = p.parse_args()
    runs = 1 if args.quick else args.runs
    header("POC federation start/stop: shoal vs NVIDIA FLARE")
    results: dict[str, tuple[list[float], list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="shoal-bench-poc-") as d:
        tmp = Path(d)
        peers = [("shoal", shoal_once)]
        if not args.quick and NVFLARE.exists():
            peers.append(("NVIDIA FLARE 2.9.0", nvflare_once))
        elif not args.quick:
            emit(f"NVIDIA FLARE not installed ({NVFLARE}); run bash bench/peers/setup.sh nvflare")
        for name, once in peers:
            starts, stops = [], []
            for _ in range(runs):
                s, t = once(tmp)
                starts.append(s)
                stops.append(t)
            results[name] = (starts, stops)
            emit(
                f"    raw {name}: start {[round(x, 2) for x in starts]} stop {[round(x, 2) for x in stops]}"
            )
    rows = []
    for name, (starts, stops) in results.items():
        rows.append([name, fmt_s(stats(starts)["median"]), fmt_s(stats(stops)["median"])])
    emit()
    table(rows, ["federation (server + 2 sites)", "start until ready (median)", "stop (median)"])


if __name__ == "__main__":
    main()
