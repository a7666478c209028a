"""Accuracy of the shipped algorithms on non-IID MNIST (issue 20, "Evidence").

    SHOAL_MNIST_PATH=/work/shared/data/mnist.npz \\
        nice -n 10 python bench/noniid.py [--quick] [--tune] [--fedbuff] [--rounds 50]
        [--alphas 0.1,0.5] [--epochs 1 | --local-steps K] [--cache FILE] [--save]

``bench/results/2026-12-05-noniid.md`` is ``--tune --fedbuff --save`` (~40 min
on 2 shared cores).

The registered workflows ``fedavg``, ``fedavgm``, ``fedadam``, ``fedyogi``,
``fedprox`` and ``scaffold`` run in ``shoal.sim`` on one split of MNIST's
60,000 training images over 10 sites, for each Dirichlet concentration
alpha: for each class, the sites' shares are drawn from Dirichlet(alpha)
(seeded, the split of ``examples/hello-pt``: every image on one site, every
class present, sites of unequal size). The same model (McMahan et al.'s
"2NN": 784-200-200-10 MLP, ReLU, float32, initialised from numpy seed 0),
the same site script for every algorithm, the same local training
(``--epochs`` epochs of plain SGD, ``--lr``, batch ``--batch``, over the
site's data, shuffled from a seed per site; or ``--local-steps K`` batches at
every site whatever its size), and the server's ``evaluate`` hook scoring
the *global* model on the full 10,000-image test set after every round.

The site script is what a user writes (``docs/algorithms.md``): FedProx adds
``shoal.frameworks.torch.proximal_term(model, task)`` to the loss (mu comes
in the task's meta), SCAFFOLD wraps each step with
``shoal.frameworks.torch.ScaffoldCorrection`` (option II; ``c_i`` kept in
``fl.state_dir()``) and sends its extras; the others train plainly.

``--tune`` first runs a small server-lr search for FedAvgM, FedAdam and
FedYogi at alpha 0.5 (``--tune-rounds`` rounds, best test accuracy of the
last round wins) and uses the winners in the grid; without it the grid uses
``--lr-fedavgm`` etc. ``--fedbuff`` adds FedBuff next to FedAvg when half the
sites are 10x slower: every task lasts at least ``--task-s`` seconds at
site-1, -3, ... and 10x that at site-2, -4, ... (training, then a sleep to
that length), accuracy reported against wall time from the first task.
``--cache FILE`` keeps each finished run (JSON lines) and reads it back when
the same run is asked again, so an interrupted run resumes.

``--quick``: 2 algorithms (fedavg, scaffold), 3 rounds, alpha 0.5, 10% of
each site's data; for the smoke test.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, Tee, emit, header, table, write_result  # noqa: E402

from shoal.sim import SimulatorConfig, simulate  # noqa: E402

ALGORITHMS = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedprox", "scaffold")
NUM_SITES = 10
DATA_ENV = "SHOAL_NONIID_BENCH_DATA"
#: Keys of the runs read back from ``--cache`` in this invocation.
CACHED: list[str] = []

MODEL_PY = '''
"""The 2NN of McMahan et al. (2017) and the server's evaluation on MNIST's test set."""
import os
import threading

import numpy as np
import torch
from torch import nn

_TEST = {}
_LOCK = threading.Lock()


def build_model():
    """PyTorch's default initialisation (uniform, bound 1/sqrt(fan_in)) drawn
    from numpy seeded 0, not torch's global generator, which the simulator's
    site threads and the server share."""
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
        nn.Linear(200, 10),
    )
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                bound = 1.0 / np.sqrt(layer.in_features)
                for p in (layer.weight, layer.bias):
                    p.copy_(torch.from_numpy(rng.uniform(-bound, bound, p.shape).astype(np.float32)))
    return model


@torch.no_grad()
def evaluate(params, round):
    from shoal.frameworks.torch import set_weights

    with _LOCK:
        if not _TEST:
            d = np.load(os.path.join(os.environ["SHOAL_NONIID_BENCH_DATA"], "test.npz"))
            _TEST.update(x=torch.from_numpy(d["x"]), y=torch.from_numpy(d["y"]), model=build_model())
        model = _TEST["model"]
        set_weights(model, params)
        logits = model(_TEST["x"])
        loss = float(nn.functional.cross_entropy(logits, _TEST["y"]))
        acc = float((logits.argmax(1) == _TEST["y"]).float().mean())
    return {"accuracy": acc, "loss": loss}
'''

TRAIN_PY = '''
"""One site: plain local SGD; FedProx's term or SCAFFOLD's correction through
the shoal helpers, as docs/algorithms.md shows them."""
import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from model import build_model

import shoal.client as fl
from shoal.frameworks.torch import ScaffoldCorrection, get_weights, proximal_term, set_weights

p = argparse.ArgumentParser()
p.add_argument("--data", required=True)
p.add_argument("--helper", choices=["none", "prox", "scaffold"], default="none")
p.add_argument("--lr", type=float, default=0.05)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--epochs", type=int, default=1)
p.add_argument("--steps", type=int, default=0)
p.add_argument("--task-s", type=float, default=0.0)
args = p.parse_args()
torch.set_num_threads(1)
fl.init()
index = fl.system_info()["site_index"]
d = np.load(f"{args.data}/site{index}.npz")
x, y = torch.from_numpy(d["x"]), torch.from_numpy(d["y"])
n = len(y)
model = build_model()
shuffle = torch.Generator().manual_seed(1000 + index)
# Odd sites (site-2, site-4, ...) are the slow ones when --task-s is given.
least_s = args.task_s * (10 if index % 2 else 1)


def batches():
    """--epochs passes over the site's images, or with --steps K exactly K
    batches whatever the site's size (the same K at every site)."""
    taken = 0
    for epoch in range(args.epochs if not args.steps else 10**9):
        order = torch.randperm(n, generator=shuffle)
        for start in range(0, n, args.batch):
            yield order[start : start + args.batch]
            taken += 1
            if taken == args.steps:
                return


while fl.is_running():
    task = fl.receive()
    if task is None:
        break
    started = time.monotonic()
    set_weights(model, task.params)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    scaffold = ScaffoldCorrection(model, task, fl.state_dir()) if args.helper == "scaffold" else None
    total, steps = 0.0, 0
    for idx in batches():
        loss = F.cross_entropy(model(x[idx]), y[idx])
        total += float(loss)
        if args.helper == "prox":
            loss = loss + proximal_term(model, task)
        optimizer.zero_grad()
        loss.backward()
        if scaffold is not None:
            scaffold.apply()
        optimizer.step()
        steps += 1
    extras = scaffold.result(lr=args.lr) if scaffold is not None else {}
    train_s = time.monotonic() - started
    left = least_s - train_s
    if left > 0:
        time.sleep(left)
    fl.send(fl.FLModel(params=get_weights(model), extras=extras, num_examples=n,
                       metrics={"train_loss": total / max(1, steps), "train_s": train_s}))
'''


# -- the data ----------------------------------------------------------------------


def _hello_pt_data() -> Any:
    """examples/hello-pt/app/data.py, loaded by path (its split, one copy of it)."""
    path = ROOT / "examples" / "hello-pt" / "app" / "data.py"
    spec = importlib.util.spec_from_file_location("_hello_pt_data", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_data(folder: Path, alpha: float, seed: int, fraction: float) -> list[list[int]]:
    """Each site's images as ``site<i>.npz`` and the test set as ``test.npz``;
    returns each site's class counts."""
    path = os.environ.get("SHOAL_MNIST_PATH") or str(ROOT.parent / "shared" / "data" / "mnist.npz")
    if not Path(path).is_file():
        raise SystemExit(f"MNIST not found at {path}: set SHOAL_MNIST_PATH to mnist.npz")
    data = _hello_pt_data()
    with np.load(path) as d:
        x = d["x_train"].reshape(-1, 784).astype(np.float32) / 255.0
        y = d["y_train"].astype(np.int64)
        xt = d["x_test"].reshape(-1, 784).astype(np.float32) / 255.0
        yt = d["y_test"].astype(np.int64)
    folder.mkdir(parents=True, exist_ok=True)
    counts = []
    sub = np.random.default_rng([seed, 1])
    for i, idx in enumerate(data.dirichlet_split(y, NUM_SITES, alpha, seed)):
        if fraction < 1:  # the same share of each site's images, seeded
            idx = np.sort(sub.permutation(idx)[: max(1, round(len(idx) * fraction))])
        np.savez(folder / f"site{i}.npz", x=x[idx], y=y[idx])
        counts.append(np.bincount(y[idx], minlength=10).tolist())
    np.savez(folder / "test.npz", x=xt, y=yt)
    return counts


# -- one run -----------------------------------------------------------------------


def workflow_yaml(name: str, rounds: int, options: dict[str, Any]) -> str:
    keys = {"name": name, "num_rounds": rounds, **options}
    return "".join(f"  {k}: {v}\n" for k, v in keys.items())


def write_job(folder: Path, label: str, workflow: str, client_args: Sequence[str]) -> Path:
    job = folder / label
    (job / "app").mkdir(parents=True)
    (job / "app" / "model.py").write_text(textwrap.dedent(MODEL_PY))
    (job / "app" / "train.py").write_text(textwrap.dedent(TRAIN_PY))
    args = ", ".join(json.dumps(str(a)) for a in client_args)
    (job / "job.yml").write_text(
        f"name: {label}\nmin_clients: {NUM_SITES}\nworkflow:\n{workflow}"
        f"client:\n  script: train.py\n  args: [{args}]\n"
        "server:\n  model: 'model:build_model'\n  evaluate: 'model:evaluate'\n"
    )
    return job


def run_one(
    args: argparse.Namespace,
    tmp: Path,
    label: str,
    workflow: str,
    data_dir: Path,
    *,
    helper: str = "none",
    task_s: float = 0.0,
) -> dict[str, Any]:
    """Simulate one job; its accuracy per round (or version) and timings."""
    client = [
        "--data", str(data_dir), "--helper", helper, "--lr", args.lr,
        "--batch", args.batch, "--epochs", args.epochs, "--steps", args.local_steps,
        "--task-s", task_s,
    ]  # fmt: skip
    job = write_job(tmp / "jobs", label, workflow, client)
    os.environ[DATA_ENV] = str(data_dir)
    threads = NUM_SITES if task_s else args.threads
    config = SimulatorConfig(
        job_dir=job,
        num_sites=NUM_SITES,
        workdir=tmp / "runs",
        mode=args.mode,
        threads=threads,
        processes=args.processes,
        per_site_logs=False,
    )
    t = time.perf_counter()
    result = simulate(config)
    seconds = time.perf_counter() - t
    if not result.ok:
        raise SystemExit(f"{label}: {result.failure_summary()}")
    lines = [json.loads(x) for x in result.metrics_path.read_text().splitlines()]
    t0 = float(lines[0]["started"])
    train_s: dict[str, list[float]] = {"fast": [], "slow": []}
    results = {"fast": 0, "slow": 0}
    for m in lines:
        for site, n in (m.get("contributions") or dict.fromkeys(m["sites"], 1)).items():
            results["slow" if int(site.split("-")[1]) % 2 == 0 else "fast"] += n
        for site, metrics in m["sites"].items():
            if "train_s" in metrics:  # site-2 has index 1: slow
                train_s["slow" if int(site.split("-")[1]) % 2 == 0 else "fast"].append(
                    float(metrics["train_s"])
                )
    return {
        "label": label,
        "accuracy": [float(m["server"]["accuracy"]) for m in lines],
        "loss": [float(m["server"]["loss"]) for m in lines],
        "wall": [float(m["started"]) + float(m["duration_s"]) - t0 for m in lines],
        "seconds": seconds,
        "results": results,
        "train_s_max": {k: max(v, default=0.0) for k, v in train_s.items()},
    }


def steps_key(args: argparse.Namespace) -> str:
    """The local settings in a ``--cache`` key (the defaults add nothing)."""
    return (
        (f"-k{args.local_steps}" if args.local_steps else "")
        + (f"-e{args.epochs}" if args.epochs != 1 else "")
        + (f"-b{args.batch}" if args.batch != 32 else "")
        + (f"-s{args.seed}" if args.seed != 0 else "")
    )


def cached_run(
    args: argparse.Namespace, key: str, fn: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """``fn()``, or its record from ``--cache`` (a JSON-lines file) when the
    same key ran before: an interrupted grid resumes where it stopped."""
    if args.cache:
        path = Path(args.cache)
        if path.exists():
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                if rec.get("key") == key:
                    CACHED.append(key)
                    return dict(rec["run"])
    run = fn()
    if args.cache:
        with open(args.cache, "a") as f:
            f.write(json.dumps({"key": key, "run": run}) + "\n")
    return dict(run)


# -- the phases ------------------------------------------------------------------


def options(args: argparse.Namespace, name: str, mu: float = 0.01) -> tuple[dict[str, Any], str]:
    """The workflow's options in the grid, and the site helper it needs."""
    if name == "fedavgm":
        return {"server_lr": args.lr_fedavgm, "server_momentum": 0.9}, "none"
    if name in ("fedadam", "fedyogi"):
        lr = args.lr_fedadam if name == "fedadam" else args.lr_fedyogi
        return {"server_lr": lr, "beta1": 0.9, "beta2": 0.99, "tau": args.tau}, "none"
    if name == "fedprox":
        return {"mu": mu}, "prox"
    if name == "scaffold":
        return {"server_lr": 1.0}, "scaffold"
    return {}, "none"


def tune(args: argparse.Namespace, tmp: Path, data_dir: Path) -> None:
    grids = {
        "fedavgm": [float(v) for v in args.grid_fedavgm.split(",")],
        "fedadam": [float(v) for v in args.grid_adaptive.split(",")],
        "fedyogi": [float(v) for v in args.grid_adaptive.split(",")],
    }
    emit(
        f"\n## Tuning: server lr at alpha 0.5, {args.tune_rounds} rounds "
        "(the best final test accuracy wins; beta 0.9 for FedAvgM; beta1 0.9, beta2 0.99, "
        f"tau {args.tau:g} for the adaptive ones)\n"
    )
    rows = []
    for name, grid in grids.items():
        if name not in args.algorithms:
            continue
        best = (-1.0, 0.0)
        for lr in grid:
            setattr(args, f"lr_{name}", lr)
            opts, helper = options(args, name)
            label = f"tune-{name}-lr{lr:g}"
            run = cached_run(
                args,
                f"{label}-r{args.tune_rounds}-f{args.fraction}-lr{args.lr}{steps_key(args)}",
                partial(
                    run_one, args, tmp, label, workflow_yaml(name, args.tune_rounds, opts),
                    data_dir, helper=helper,
                ),
            )  # fmt: skip
            acc = run["accuracy"][-1]
            rows.append([name, f"{lr:g}", f"{acc:.4f}", f"{max(run['accuracy']):.4f}"])
            best = max(best, (acc, lr))
        setattr(args, f"lr_{name}", best[1])
        emit(f"{name}: server_lr {best[1]:g} ({best[0]:.4f})")
    table(
        rows, ["workflow", "server_lr", f"accuracy round {args.tune_rounds}", "best of any round"]
    )


def grid(args: argparse.Namespace, tmp: Path, data_dirs: dict[float, Path]) -> None:
    marks = [r for r in (3, 10, 20, 50) if r <= args.rounds]
    if args.rounds not in marks:
        marks.append(args.rounds)
    for alpha, data_dir in data_dirs.items():
        emit(f"\n## alpha {alpha:g}: test accuracy of the global model after each round count\n")
        rows = []
        configs = [
            (name, mu) for name in args.algorithms for mu in (args.mu if name == "fedprox" else [0])
        ]
        for name, mu in configs:
            opts, helper = options(args, name, mu)
            shown = ", ".join(f"{k} {v:g}" for k, v in opts.items()) or "-"
            label = f"a{alpha:g}-{name}" + (f"-mu{mu:g}" if name == "fedprox" else "")
            key = f"{label}-{json.dumps(opts, sort_keys=True)}-r{args.rounds}-f{args.fraction}-lr{args.lr}{steps_key(args)}"
            run = cached_run(
                args,
                key,
                partial(
                    run_one, args, tmp, label, workflow_yaml(name, args.rounds, opts), data_dir,
                    helper=helper,
                ),
            )  # fmt: skip
            acc = run["accuracy"]
            rows.append(
                [
                    name,
                    shown,
                    *(f"{acc[r - 1]:.4f}" for r in marks),
                    f"{max(acc):.4f} (r{int(np.argmax(acc)) + 1})",
                    f"{run['seconds']:.0f}",
                ]
            )
            emit(f"  {label}: " + " ".join(f"{a:.3f}" for a in acc))
        emit()
        table(
            rows,
            ["workflow", "server / site options", *(f"round {r}" for r in marks), "best", "s"],
        )


def fedbuff(args: argparse.Namespace, tmp: Path, data_dir: Path, alpha: float) -> None:
    k = NUM_SITES // 2
    emit(
        f"\n## FedBuff against FedAvg, alpha {alpha:g}, half the sites 10x slower\n\n"
        f"Every task lasts at least {args.task_s:g} s at an even-indexed site (site-1, "
        f"site-3, ...) and {10 * args.task_s:g} s at an odd-indexed one (site-2, site-4, "
        f"...): sleep-injected after training, which takes less. FedAvg {args.buff_rounds} rounds; FedBuff "
        f"{args.buff_versions} versions, K = {k}, server_lr 1, staleness 1/sqrt(1+tau).\n"
    )
    runs = {
        "fedavg": workflow_yaml("fedavg", args.buff_rounds, {}),
        "fedbuff": (
            f"  name: fedbuff\n  num_versions: {args.buff_versions}\n  buffer_size: {k}\n"
            "  server_lr: 1.0\n"
        ),
    }
    curves = {}
    for name, workflow in runs.items():
        label = f"buff-a{alpha:g}-{name}"
        curves[name] = cached_run(
            args,
            f"{label}-{args.buff_rounds}-{args.buff_versions}-{args.task_s}-f{args.fraction}"
            + steps_key(args),
            partial(run_one, args, tmp, label, workflow, data_dir, task_s=args.task_s),
        )
    marks = [float(v) for v in args.buff_marks.split(",")]
    rows = []
    for name, run in curves.items():
        cells = []
        for t in marks:
            done = [a for w, a in zip(run["wall"], run["accuracy"], strict=True) if w <= t]
            cells.append(f"{done[-1]:.4f}" if done else "-")
        rows.append([name, *cells])
    emit("test accuracy of the global model reached by wall time (from the first task):\n")
    table(rows, ["workflow", *(f"<= {t:g} s" for t in marks)])
    emit()
    target_rows = []
    for target in (0.8, 0.85, 0.9):
        cells = []
        for run in curves.values():
            hit = [w for w, a in zip(run["wall"], run["accuracy"], strict=True) if a >= target]
            cells.append(f"{hit[0]:.1f}" if hit else "not reached")
        target_rows.append([f"{target:.2f}", *cells])
    table(target_rows, ["target accuracy", *(f"{n} s" for n in curves)])
    emit()
    table(
        [
            [
                n, len(r["accuracy"]), f"{r['wall'][-1]:.1f}", f"{r['accuracy'][-1]:.4f}",
                r["results"]["fast"], r["results"]["slow"],
                f"{r['train_s_max']['fast']:.2f} / {r['train_s_max']['slow']:.2f}",
            ]  # fmt: skip
            for n, r in curves.items()
        ],
        ["workflow", "rounds / versions", "wall s", "final accuracy", "fast results",
         "slow results", "longest training s (fast / slow)"],
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fedavg and scaffold, 3 rounds, 10%% data")
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--alphas", default="0.1,0.5")
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS))
    ap.add_argument("--fraction", type=float, default=1.0, help="share of each site's images")
    ap.add_argument("--seed", type=int, default=0, help="seed of the split")
    ap.add_argument("--lr", type=float, default=0.05, help="local SGD learning rate")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument(
        "--local-steps", type=int, default=0, help="K batches a round at every site (0: --epochs)"
    )
    ap.add_argument("--mu", default="0.01,0.1,1", help="FedProx mu, one grid row each")
    ap.add_argument("--tau", type=float, default=1e-3, help="FedAdam/FedYogi tau")
    ap.add_argument("--lr-fedavgm", type=float, default=0.1)
    ap.add_argument("--lr-fedadam", type=float, default=0.01)
    ap.add_argument("--lr-fedyogi", type=float, default=0.01)
    ap.add_argument("--tune", action="store_true", help="search the server lr first")
    ap.add_argument("--tune-rounds", type=int, default=20)
    ap.add_argument("--grid-fedavgm", default="0.03,0.1,0.3,1,3,10")
    ap.add_argument("--grid-adaptive", default="0.001,0.003,0.01,0.03,0.1,0.3,1")
    ap.add_argument("--fedbuff", action="store_true", help="add FedBuff against FedAvg")
    ap.add_argument("--no-grid", action="store_true", help="skip the algorithm grid")
    ap.add_argument("--task-s", type=float, default=2.0, help="FedBuff run: a fast task's length")
    ap.add_argument("--buff-rounds", type=int, default=6)
    ap.add_argument("--buff-versions", type=int, default=60)
    ap.add_argument("--buff-marks", default="10,30,50,70,90,110,125")
    ap.add_argument("--mode", choices=["threads", "processes"], default="threads")
    ap.add_argument("--threads", type=int, default=2, help="threads mode: sites at work at once")
    ap.add_argument("--processes", type=int, default=2, help="processes mode: worker processes")
    ap.add_argument("--cache", help="JSON-lines file of finished runs, to resume")
    ap.add_argument("--save", action="store_true", help="write bench/results/<date>-noniid.md")
    ap.add_argument("--name", default="noniid", help="result file: <date>-<name>.md")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.alphas, args.fraction = 3, "0.5", 0.1
        args.algorithms = "fedavg,scaffold"
        args.tune_rounds, args.grid_fedavgm, args.grid_adaptive = 2, "0.1", "0.01"
        args.task_s, args.buff_rounds, args.buff_versions = 0.2, 2, 4
        args.buff_marks = "1,2,4"
    args.algorithms = [a for a in args.algorithms.split(",") if a]
    args.mu = [float(v) for v in args.mu.split(",")]
    unknown = sorted(set(args.algorithms) - set(ALGORITHMS))
    if unknown:
        raise SystemExit(f"--algorithms: unknown {unknown} (known: {', '.join(ALGORITHMS)})")
    with Tee() as tee:
        run(args)
    if args.save:
        emit(f"saved {write_result(args.name, tee.text())}")


def run(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    header("accuracy on non-IID MNIST: FedAvg, FedAvgM, FedAdam, FedYogi, FedProx, SCAFFOLD")
    alphas = [float(a) for a in args.alphas.split(",")]
    emit(
        f"{NUM_SITES} sites, Dirichlet(alpha) label shares per class (seed {args.seed}), "
        f"{args.fraction:.0%} of each site's images; MLP 784-200-200-10 from seed 0; "
        "local: "
        + (f"{args.local_steps} steps" if args.local_steps else f"{args.epochs} epoch(s)")
        + f" of SGD lr {args.lr:g}, batch {args.batch}, no momentum; "
        f"shoal.sim {args.mode}"
        + (f" ({args.threads} sites at work at once)" if args.mode == "threads" else "")
        + f"; torch {torch.__version__}, 1 thread"
    )
    with tempfile.TemporaryDirectory(prefix="shoal-noniid-") as name:
        tmp = Path(name)
        data_dirs = {}
        for alpha in sorted(set(alphas) | ({0.5} if args.tune or args.fedbuff else set())):
            data_dirs[alpha] = tmp / f"data-a{alpha:g}"
            counts = write_data(data_dirs[alpha], alpha, args.seed, args.fraction)
            sizes = [sum(c) for c in counts]
            major = [sum(1 for v in c if v >= 0.05 * sum(c)) for c in counts]
            emit(f"alpha {alpha:g}: site sizes {sizes}; classes holding >= 5% of a site: {major}")
        if args.tune:
            tune(args, tmp, data_dirs[0.5])
        if not args.no_grid:
            grid(args, tmp, {a: data_dirs[a] for a in alphas})
        if args.fedbuff:
            fedbuff(args, tmp, data_dirs[0.5], 0.5)
    if CACHED:
        emit(
            f"\n{len(CACHED)} run(s) read back from {args.cache} (run earlier by this "
            "script with the same settings; their 's' is from then)"
        )


if __name__ == "__main__":
    main()
