"""Drive NVIDIA FLARE's own POC federation with the tiny-round workload.

Runs with this repository's Python; NVIDIA FLARE runs from its own venv
(``bash bench/peers/setup.sh nvflare``). Its POC mode (server + 2 clients,
its provisioned mTLS), its FedAvg (``NumpyFedAvgRecipe``, a 4x4 float32
model) and a client script that echoes the model back: the same near-zero
local work as shoal's ``round_overhead.py``. The round time is the interval
between the server's "Round N started" log lines (rounds 2..N).

    python bench/peers_nvflare.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, emit, fmt_s, header  # noqa: E402

VENV = ROOT / "bench" / "peers" / "nvflare" / "venv" / "bin"

_CLIENT = """\
import nvflare.client as flare

flare.init()
while flare.is_running():
    m = flare.receive()
    flare.send(flare.FLModel(params=m.params, metrics={"accuracy": 0.0},
                             meta={"NUM_STEPS_CURRENT_ROUND": 1}))
"""

_JOB = """\
import sys
import numpy as np
from nvflare.app_common.np.recipes.fedavg import NumpyFedAvgRecipe

recipe = NumpyFedAvgRecipe(name="tiny", model=np.zeros((4, 4), np.float32).tolist(),
                           min_clients=2, num_rounds=int(sys.argv[2]), train_script="client.py")
recipe.export(sys.argv[1])
"""

_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def round_starts(log: str) -> list[float]:
    """Timestamps of the log line just before each 'Round N started.' banner."""
    starts, last = [], None
    for line in log.splitlines():
        m = _TS.match(line)
        if m:
            last = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        elif "started." in line and "Round" in line and last is not None:
            starts.append(last)
    return starts


def measure(rounds: int, timeout: float = 900.0) -> dict:
    nvflare = str(VENV / "nvflare")
    with tempfile.TemporaryDirectory(prefix="shoal-bench-nvflare-") as d:
        tmp = Path(d)
        env = {**os.environ, "NVFLARE_POC_WORKSPACE": str(tmp / "poc")}

        def run(*args: str, check: bool = True) -> str:
            r = subprocess.run(
                [nvflare, *args], env=env, capture_output=True, text=True, input="y\n", timeout=300
            )
            if check and r.returncode != 0:
                raise RuntimeError(f"nvflare {' '.join(args)}: {r.stdout[-600:]}{r.stderr[-600:]}")
            return r.stdout

        (tmp / "client.py").write_text(_CLIENT)
        (tmp / "job.py").write_text(_JOB)
        subprocess.run(
            [str(VENV / "python"), "job.py", "out", str(rounds)],
            cwd=tmp,
            check=True,
            capture_output=True,
            timeout=300,
        )
        run("poc", "prepare", "-n", "2")
        kit = tmp / "poc" / "example_project" / "prod_00" / "admin@nvidia.com"
        run("poc", "start", "-ex", "admin@nvidia.com")
        try:
            t0 = time.monotonic()
            out = run("job", "submit", "-j", str(tmp / "out" / "tiny"), "--startup-kit", str(kit))
            job_id = re.search(r"job_id:\s*(\S+)", out)
            if not job_id:
                raise RuntimeError(f"no job id in: {out[-400:]}")
            # The job's own log folder is gone once it finishes: keep a copy.
            log = (
                tmp / "poc" / "example_project" / "prod_00" / "server" / job_id.group(1) / "log.txt"
            )
            text = ""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if log.exists():
                    text = log.read_text(errors="replace") or text
                listing = run("job", "list", "--startup-kit", str(kit), check=False)
                line = next((x for x in listing.splitlines() if job_id.group(1) in x), "")
                if "FINISHED" in line:
                    break
                time.sleep(0.5)
            finished = time.monotonic() - t0
            starts = round_starts(text)
        finally:
            run("poc", "stop", check=False)
    gaps = [b - a for a, b in zip(starts[1:], starts[2:], strict=False)]
    return {
        "round_median_s": statistics.median(gaps) if gaps else None,
        "rounds_seen": len(starts),
        "gaps_s": [round(g, 3) for g in gaps],
        "submit_to_finished_s": finished,
        "status": line.strip(),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args(argv)
    header("NVIDIA FLARE 2.9.0 POC: tiny FedAvg round (same workload as round_overhead.py)")
    if not (VENV / "nvflare").exists():
        emit(f"NVIDIA FLARE not installed in {VENV}; run: bash bench/peers/setup.sh nvflare")
        return {}
    res = measure(args.rounds)
    emit(f"    raw: {res}")
    med = res["round_median_s"]
    emit(f"NVIDIA FLARE tiny round (rounds 2..N, median): {fmt_s(med) if med else 'n/a'}")
    return res


if __name__ == "__main__":
    main()
