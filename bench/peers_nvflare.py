"""Drive NVIDIA FLARE's own POC federation with shoal's round workloads.

Runs with this repository's Python; NVIDIA FLARE runs from its own venv
(``bash bench/peers/setup.sh nvflare``). Its POC mode (server + 2 clients,
its provisioned mTLS), its FedAvg and a client script that echoes the model
back: the same near-zero local work as shoal's ``round_overhead.py`` and
``transfer.py``. The round time is the interval between the server's
"Round N started" log lines (rounds 2..N).

Two model sizes:

- ``--size tiny`` (default): a 4x4 float32 model through ``NumpyFedAvgRecipe``,
  the tiny-round workload.
- ``--size 100M`` (any size): random float32 data in 8 arrays, as in
  ``transfer.py``. ``NumpyFedAvgRecipe(model=...)`` writes the initial model
  into the job's JSON config as a list, which does not scale to 100 MiB, and
  its ``NPModelPersistor`` holds one array; so the job uses the generic
  ``FedAvgRecipe`` with a small persistor (``ModelPersistor``) that loads the
  8 arrays from an ``.npz`` file on the server. The arrays cross the wire
  by NVIDIA FLARE's default path, nothing raised: its numpy decomposer hands
  each array to its download service (receivers pull them, one array a
  request), under a ``max_message_size`` that defaults to about 2 GiB.

Also printed: submit -> FINISHED and the peak RSS (VmHWM) of the server's and
each client's process, each with its largest child (the per-job process).

    python bench/peers_nvflare.py [--rounds 10] [--size tiny|100M]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, GiB, MiB, PeakSampler, emit, fmt_s, header, mib  # noqa: E402

VENV = ROOT / "bench" / "peers" / "nvflare" / "venv" / "bin"
NUM_ARRAYS = 8

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

# A module of its own: FedJob copies the persistor's source file into the
# server app's custom/ folder, and job.py must not be imported there.
_PERSISTOR = '''\
"""The initial global model from an .npz file on the server (a dict of arrays);
saves the global model each round, as NVIDIA FLARE's NPModelPersistor does."""
import os

import numpy as np
from nvflare.app_common.abstract.model import ModelLearnableKey, make_model_learnable
from nvflare.app_common.abstract.model_persistor import ModelPersistor


class NpzModelPersistor(ModelPersistor):
    def __init__(self, path, model_name="server.npz"):
        super().__init__()
        self.path = path
        self.model_name = model_name

    def load_model(self, fl_ctx):
        with np.load(self.path, allow_pickle=False) as npz:
            weights = {k: npz[k] for k in npz.files}
        self.log_info(fl_ctx, f"Loaded {len(weights)} arrays from {self.path}")
        return make_model_learnable(weights=weights, meta_props={})

    def save_model(self, model_learnable, fl_ctx):
        root = fl_ctx.get_workspace().get_result_root(fl_ctx.get_job_id())
        os.makedirs(root, exist_ok=True)
        np.savez(os.path.join(root, self.model_name), **model_learnable[ModelLearnableKey.WEIGHTS])
'''

# Same data as shoal's bench model (_common._MODEL_PY): seed 1234, equal arrays.
_BIG_JOB = """\
import sys
import numpy as np
from nvflare.fuel.utils.constants import FrameworkType
from nvflare.recipe.fedavg import FedAvgRecipe
from npz_persistor import NpzModelPersistor

out, rounds, total, arrays, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rng = np.random.default_rng(1234)
n = max(1, total // 4 // arrays)
np.savez(path, **{f"layer{i:03d}": rng.random(n, dtype=np.float32) for i in range(arrays)})
recipe = FedAvgRecipe(name="model", model_persistor=NpzModelPersistor(path=path), min_clients=2,
                      num_rounds=rounds, train_script="client.py", framework=FrameworkType.NUMPY)
recipe.export(out)
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


def parse_size(text: str) -> int:
    """'100M' -> bytes (K, M, G: powers of 1024), as transfer.py reads --sizes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1024, "M": MiB, "G": GiB}.get(t[-1:], 1)
    return int(float(t.rstrip("KMG")) * mult)


def poc_pids(prod: Path, timeout: float = 60.0) -> dict[str, int]:
    """The server's and each client's main process, from the pid.fl their start
    scripts write (``exec python3 -m nvflare.private.fed.app...``); job processes
    are its children, which ``PeakSampler`` follows."""
    names = ["server", *sorted(p.name for p in prod.glob("site-*") if p.is_dir())]
    deadline = time.monotonic() + timeout
    pids: dict[str, int] = {}
    while time.monotonic() < deadline and len(pids) < len(names):
        for name in names:
            f = prod / name / "pid.fl"
            if name in pids or not f.exists():
                continue
            pid = int(f.read_text().strip() or 0)
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "nvflare.private.fed.app" in cmd and str(prod / name) in cmd:
                pids[name] = pid
        time.sleep(0.2)
    if len(pids) < len(names):
        raise RuntimeError(f"POC processes not found in {prod}: got {pids} of {names}")
    return pids


def workspace_pids(workspace: Path) -> list[int]:
    """Processes whose command line names ``workspace``: only this run's POC."""
    key = str(workspace).encode()
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if key in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
    return pids


def reap(workspace: Path, wait: float = 60.0) -> list[int]:
    """Wait for the POC's processes to exit after ``poc stop`` (it returns
    before they do); signal any still there after ``wait`` s. Returns those."""
    deadline = time.monotonic() + wait
    while (left := workspace_pids(workspace)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not workspace_pids(workspace):
            break
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        time.sleep(2)
    return left


def errors(log: str, limit: int = 20) -> list[str]:
    lines = [x for x in log.splitlines() if " ERROR " in x or "Exception" in x or "Error:" in x]
    return lines[-limit:]


def measure(rounds: int, size: int | None = None, timeout: float = 900.0) -> dict:
    """One job on a fresh POC federation; ``size`` None is the 4x4 tiny model."""
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
        if size is None:
            name = "tiny"
            (tmp / "job.py").write_text(_JOB)
            job_args = ["out", str(rounds)]
        else:
            name = "model"
            (tmp / "npz_persistor.py").write_text(_PERSISTOR)
            (tmp / "job.py").write_text(_BIG_JOB)
            model = tmp / "initial_model.npz"
            job_args = ["out", str(rounds), str(size), str(NUM_ARRAYS), str(model)]
        r = subprocess.run(
            [str(VENV / "python"), "job.py", *job_args],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if r.returncode != 0:
            raise RuntimeError(f"job.py: {r.stdout[-600:]}{r.stderr[-1200:]}")
        run("poc", "prepare", "-n", "2")
        prod = tmp / "poc" / "example_project" / "prod_00"
        kit = prod / "admin@nvidia.com"
        run("poc", "start", "-ex", "admin@nvidia.com")
        signalled: list[int] = []
        try:
            roots = poc_pids(prod)
            with PeakSampler(roots) as peaks:
                t0 = time.monotonic()
                out = run("job", "submit", "-j", str(tmp / "out" / name), "--startup-kit", str(kit))
                job_id = re.search(r"job_id:\s*(\S+)", out)
                if not job_id:
                    raise RuntimeError(f"no job id in: {out[-400:]}")
                # The jobs' own log folders are gone once they finish: keep copies.
                logs = {n: prod / n / job_id.group(1) / "log.txt" for n in roots}
                texts = dict.fromkeys(roots, "")
                line = ""
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    for n, log in logs.items():
                        if log.exists():
                            texts[n] = log.read_text(errors="replace") or texts[n]
                    listing = run("job", "list", "--startup-kit", str(kit), check=False)
                    line = next((x for x in listing.splitlines() if job_id.group(1) in x), "")
                    if "FINISHED" in line:
                        break
                    time.sleep(0.5)
                finished = time.monotonic() - t0
            starts = round_starts(texts["server"])
        finally:
            run("poc", "stop", check=False)
            signalled = reap(tmp / "poc")
    gaps = [b - a for a, b in zip(starts[1:], starts[2:], strict=False)]
    res: dict = {
        "size": size or "tiny",
        "round_median_s": statistics.median(gaps) if gaps else None,
        "rounds_seen": len(starts),
        "gaps_s": [round(g, 3) for g in gaps],
        "submit_to_finished_s": finished,
        "status": line.strip(),
        "peak_rss": {n: peaks.total(n) for n in roots},
    }
    if signalled:
        res["signalled_after_stop"] = signalled
    if "FINISHED:COMPLETED" not in line:
        res["errors"] = {n: errors(t) for n, t in texts.items()}
    return res


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument(
        "--size", default="tiny", help="model size: tiny (4x4 float32) or bytes, e.g. 100M"
    )
    args = p.parse_args(argv)
    size = None if args.size == "tiny" else parse_size(args.size)
    what = "tiny" if size is None else f"{mib(size)} ({NUM_ARRAYS} arrays)"
    header(f"NVIDIA FLARE 2.9.0 POC: FedAvg, {what} model, 2 clients that echo it back")
    if not (VENV / "nvflare").exists():
        emit(f"NVIDIA FLARE not installed in {VENV}; run: bash bench/peers/setup.sh nvflare")
        return {}
    res = measure(args.rounds, size)
    emit(f"    raw: {res}")
    med = res["round_median_s"]
    emit(f"NVIDIA FLARE {what} round (rounds 2..N, median): {fmt_s(med) if med else 'n/a'}")
    emit(f"submit -> FINISHED ({args.rounds} rounds): {fmt_s(res['submit_to_finished_s'])}")
    emit(
        "peak RSS (VmHWM, process + largest child): "
        + ", ".join(f"{n} {mib(b)}" for n, b in res["peak_rss"].items())
    )
    for n, lines in res.get("errors", {}).items():
        for x in lines:
            emit(f"    {n}: {x}")
    return res


if __name__ == "__main__":
    main()
