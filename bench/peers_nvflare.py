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
each client's process, each with its largest child (the per-job process) and
that child's own descendants (the client script's process in
``external_process`` mode).

By default everything is at NVIDIA FLARE's defaults. Two knobs of the job's
own configuration, both documented, bound a round that does no work:

- ``--task-request-interval S``: the server's ``task_request_interval``
  (``config_fed_server.json``, ``"server": {"task_request_interval": S}``,
  written here by ``recipe.add_server_config``; default 2 s). It is the wait
  the server hands a client with each task and with each "try again": a
  client that has sent its result sleeps that long before asking for the
  next task. NVIDIA FLARE's own XGBoost and scikit-learn examples set 0.05.
  It is a server setting, not a client one: the client's own
  ``default_task_fetch_interval`` (0.5 s) only applies when the server gives
  no wait.
- ``--exec-mode external_process``: the Client API executor runs the client
  script in a process of its own (``launch_external_process=True``, launched
  once per job) instead of in a thread of the client's job process
  (``in_process``, the recipes' default). The in-process backend waits for
  the script's result and the script waits for its task in 0.5 s polls
  (``in_process_backend._RESULT_POLL_INTERVAL``, a constant since NVIDIA FLARE
  dropped the knob); the external process is told by message.
- ``--task-check-period S``: how often NVIDIA FLARE's FedAvg workflow looks
  whether a round's tasks are all back (``task_check_period``, an argument of
  its ``BaseModelController``, default 0.5 s; its cyclic recipe exposes it,
  the FedAvg recipes do not, so it is written into the exported job's
  ``config_fed_server.json``).

    python bench/peers_nvflare.py [--rounds 10] [--size tiny|100M]
        [--task-request-interval 0.05] [--task-check-period 0.05]
        [--exec-mode in_process|external_process]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    ROOT,
    GiB,
    MiB,
    PeakSampler,
    children,
    descendants,
    emit,
    fmt_s,
    header,
    mib,
    proc_status,
)

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

# argv: out, rounds, the tuning as JSON (Tuning.as_json).
_JOB = """\
import json
import sys
import numpy as np
from nvflare.app_common.np.recipes.fedavg import NumpyFedAvgRecipe

out, rounds, tuning = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
recipe = NumpyFedAvgRecipe(name="tiny", model=np.zeros((4, 4), np.float32).tolist(),
                           min_clients=2, num_rounds=rounds, train_script="client.py",
                           launch_external_process=tuning["exec_mode"] == "external_process",
                           command=sys.executable + " -u")
if tuning["task_request_interval"] is not None:
    recipe.add_server_config({"server": {"task_request_interval": tuning["task_request_interval"]}})
recipe.export(out)
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
# argv: out, rounds, tuning JSON, model bytes, arrays, .npz path.
_BIG_JOB = """\
import json
import sys
import numpy as np
from nvflare.fuel.utils.constants import FrameworkType
from nvflare.recipe.fedavg import FedAvgRecipe
from npz_persistor import NpzModelPersistor

out, rounds, tuning = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
total, arrays, path = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
rng = np.random.default_rng(1234)
n = max(1, total // 4 // arrays)
np.savez(path, **{f"layer{i:03d}": rng.random(n, dtype=np.float32) for i in range(arrays)})
recipe = FedAvgRecipe(name="model", model_persistor=NpzModelPersistor(path=path), min_clients=2,
                      num_rounds=rounds, train_script="client.py", framework=FrameworkType.NUMPY,
                      launch_external_process=tuning["exec_mode"] == "external_process",
                      command=sys.executable + " -u")
if tuning["task_request_interval"] is not None:
    recipe.add_server_config({"server": {"task_request_interval": tuning["task_request_interval"]}})
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


class JobTreePeaks(PeakSampler):
    """VmHWM of each root process plus its largest child counted with that
    child's descendants: a client's job process and, in ``external_process``
    mode, the client script's process it starts (``PeakSampler`` alone would
    miss that grandchild)."""

    def __init__(self, roots: dict[str, int], interval: float = 0.05) -> None:
        super().__init__(roots, interval)
        self._subtree: dict[tuple[str, int], dict[int, int]] = {}

    def _sample(self) -> None:
        for name, pid in self.roots.items():
            key = (name, "self")
            self.peak[key] = max(self.peak.get(key, 0), proc_status(pid).get("VmHWM", 0))
            for kid in children(pid):
                tree = self._subtree.setdefault((name, kid), {})
                for p in [kid, *descendants(kid)]:
                    tree[p] = max(tree.get(p, 0), proc_status(p).get("VmHWM", 0))
                key = (name, "child")
                self.peak[key] = max(self.peak.get(key, 0), sum(tree.values()))


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


IN_PROCESS, EXTERNAL_PROCESS = "in_process", "external_process"


@dataclass(frozen=True)
class Tuning:
    """Job-config knobs changed from NVIDIA FLARE's defaults (None: left as is)."""

    task_request_interval: float | None = None
    """The server's ``task_request_interval``, seconds (NVIDIA FLARE: 2)."""
    task_check_period: float | None = None
    """FedAvg's ``task_check_period``, seconds (NVIDIA FLARE: 0.5)."""
    exec_mode: str = IN_PROCESS
    """Where the Client API runs the client script (NVIDIA FLARE: in_process)."""

    def label(self) -> str:
        changed = []
        if self.task_request_interval is not None:
            changed.append(f"task_request_interval {self.task_request_interval:g} s")
        if self.task_check_period is not None:
            changed.append(f"FedAvg task_check_period {self.task_check_period:g} s")
        if self.exec_mode != IN_PROCESS:
            changed.append(f"Client API {self.exec_mode}")
        return ", ".join(changed) or "defaults"


def set_task_check_period(job: Path, seconds: float) -> None:
    """Write FedAvg's ``task_check_period`` into the exported job's server config:
    a documented argument of the workflow (``BaseModelController``) that the
    FedAvg recipes do not pass through."""
    path = job / "app" / "config" / "config_fed_server.json"
    config = json.loads(path.read_text())
    flows = [w for w in config["workflows"] if w["path"].endswith(".FedAvg")]
    if len(flows) != 1:
        raise RuntimeError(f"expected one FedAvg workflow in {path}, got {flows}")
    flows[0].setdefault("args", {})["task_check_period"] = seconds
    path.write_text(json.dumps(config, indent=4))


def measure(
    rounds: int, size: int | None = None, timeout: float = 900.0, *, tuning: Tuning = Tuning()
) -> dict:
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
        job_args = ["out", str(rounds), json.dumps(dataclasses.asdict(tuning))]
        if size is None:
            name = "tiny"
            (tmp / "job.py").write_text(_JOB)
        else:
            name = "model"
            (tmp / "npz_persistor.py").write_text(_PERSISTOR)
            (tmp / "job.py").write_text(_BIG_JOB)
            model = tmp / "initial_model.npz"
            job_args += [str(size), str(NUM_ARRAYS), str(model)]
        r = subprocess.run(
            [str(VENV / "python"), "job.py", *job_args],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if r.returncode != 0:
            raise RuntimeError(f"job.py: {r.stdout[-600:]}{r.stderr[-1200:]}")
        if tuning.task_check_period is not None:
            set_task_check_period(tmp / "out" / name, tuning.task_check_period)
        run("poc", "prepare", "-n", "2")
        prod = tmp / "poc" / "example_project" / "prod_00"
        kit = prod / "admin@nvidia.com"
        run("poc", "start", "-ex", "admin@nvidia.com")
        signalled: list[int] = []
        try:
            roots = poc_pids(prod)
            with JobTreePeaks(roots) as peaks:
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
        "config": tuning.label(),
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
    p.add_argument(
        "--task-request-interval",
        type=float,
        default=None,
        help="the server's task_request_interval in the job config (default: NVIDIA FLARE's, 2 s)",
    )
    p.add_argument(
        "--task-check-period",
        type=float,
        default=None,
        help="FedAvg's task_check_period in the job config (default: NVIDIA FLARE's, 0.5 s)",
    )
    p.add_argument(
        "--exec-mode",
        choices=[IN_PROCESS, EXTERNAL_PROCESS],
        default=IN_PROCESS,
        help="where the Client API runs the client script (default: in_process, the recipes')",
    )
    args = p.parse_args(argv)
    size = None if args.size == "tiny" else parse_size(args.size)
    what = "tiny" if size is None else f"{mib(size)} ({NUM_ARRAYS} arrays)"
    tuning = Tuning(args.task_request_interval, args.task_check_period, args.exec_mode)
    label = tuning.label()
    header(f"NVIDIA FLARE 2.9.0 POC ({label}): FedAvg, {what} model, 2 clients that echo it back")
    if not (VENV / "nvflare").exists():
        emit(f"NVIDIA FLARE not installed in {VENV}; run: bash bench/peers/setup.sh nvflare")
        return {}
    res = measure(args.rounds, size, tuning=tuning)
    emit(f"    raw: {res}")
    med = res["round_median_s"]
    emit(
        f"NVIDIA FLARE ({label}) {what} round (rounds 2..N, median): {fmt_s(med) if med else 'n/a'}"
    )
    emit(f"submit -> FINISHED ({args.rounds} rounds): {fmt_s(res['submit_to_finished_s'])}")
    emit(
        "peak RSS (VmHWM, process + largest child with its descendants): "
        + ", ".join(f"{n} {mib(b)}" for n, b in res["peak_rss"].items())
    )
    for n, lines in res.get("errors", {}).items():
        for x in lines:
            emit(f"    {n}: {x}")
    return res


if __name__ == "__main__":
    main()
