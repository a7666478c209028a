"""Accuracy against ε: central DP-FedAvg on MNIST (issue 22).

    SHOAL_MNIST_PATH=/work/shared/data/mnist.npz python bench/dp_accuracy.py [--quick] [--save]

A softmax regression (784 -> 10, float32) trained by ``--sites`` simulated
sites (``shoal.sim``, threads), each holding an equal IID shard of MNIST's
60,000 training images; a round asks ``--fraction`` of them, each runs one
epoch of minibatch SGD (batch 50, lr 0.1) from the global model. The server
evaluates the global model on the 10,000 test images after every round.
Rows: plain FedAvg (no DP, weighted mean), then ``dp_fedavg`` (clip norm
``--clip``, unweighted mean, Gaussian noise) for each noise multiplier z,
with ε at δ = 1e-5 from dp-accounting after the last round (Poisson
sampling of rate q = fraction, site-level DP). Accuracy is the last
round's test accuracy. The noise is seeded (``noise_seed``); the sites a
round asks are drawn with a secret seed (``secret_sampling``, what the
amplification by sampling needs), so accuracy varies a little run to run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Tee, emit, header, table, write_result  # noqa: E402

from shoal.sim import SimulatorConfig, simulate  # noqa: E402

MODEL_PY = """
import os

import numpy as np

_TEST = {}


def initial_weights():
    return {"w": np.zeros((784, 10), dtype=np.float32), "b": np.zeros(10, dtype=np.float32)}


def evaluate(params, round):
    if not _TEST:
        d = np.load(os.path.join(os.environ["SHOAL_DP_BENCH_DATA"], "test.npz"))
        _TEST.update(x=d["x"], y=d["y"])
    logits = _TEST["x"] @ params["w"] + params["b"]
    return {"accuracy": float((logits.argmax(1) == _TEST["y"]).mean())}
"""

TRAIN_PY = """
import os

import numpy as np
import shoal.client as fl

fl.init()
info = fl.system_info()
d = np.load(os.path.join(os.environ["SHOAL_DP_BENCH_DATA"], f"site{info['site_index']}.npz"))
x, y = d["x"], d["y"]
onehot = np.eye(10, dtype=np.float32)[y]
rng = np.random.default_rng(info["site_index"])
while fl.is_running():
    task = fl.receive()
    w, b = np.array(task.params["w"]), np.array(task.params["b"])
    for idx in np.array_split(rng.permutation(len(y)), max(1, len(y) // 50)):
        z = x[idx] @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - onehot[idx]) / len(idx)
        w -= 0.1 * x[idx].T @ g
        b -= 0.1 * g.sum(0)
    fl.send(fl.FLModel(params={"w": w, "b": b}, num_examples=len(y)))
"""


def _write_data(folder: Path, sites: int) -> None:
    path = os.environ.get("SHOAL_MNIST_PATH")
    if not path:
        raise SystemExit("set SHOAL_MNIST_PATH to mnist.npz")
    d = np.load(path)
    x = d["x_train"].reshape(-1, 784).astype(np.float32) / 255.0
    y = d["y_train"].astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    for i, idx in enumerate(np.array_split(order, sites)):
        np.savez(folder / f"site{i}.npz", x=x[idx], y=y[idx])
    xt = d["x_test"].reshape(-1, 784).astype(np.float32) / 255.0
    np.savez(folder / "test.npz", x=xt, y=d["y_test"].astype(np.int64))


def _job(folder: Path, name: str, workflow: str) -> Path:
    job = folder / name
    (job / "app").mkdir(parents=True)
    (job / "app" / "model.py").write_text(textwrap.dedent(MODEL_PY))
    (job / "app" / "train.py").write_text(textwrap.dedent(TRAIN_PY))
    (job / "job.yml").write_text(
        f"name: {name}\nmin_clients: 1\nworkflow:\n{workflow}"
        "client:\n  script: train.py\n"
        "server:\n  initial_weights: 'model:initial_weights'\n  evaluate: 'model:evaluate'\n"
    )
    return job


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sites", type=int, default=100)
    ap.add_argument("--fraction", type=float, default=0.3)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--clip", type=float, default=0.5)
    ap.add_argument("--z", default="0.3,0.6,1.0,2.0", help="noise multipliers, comma-separated")
    ap.add_argument("--quick", action="store_true", help="20 sites, 3 rounds, one z")
    ap.add_argument("--save", action="store_true", help="write bench/results/<date>-dp-accuracy.md")
    args = ap.parse_args()
    if args.quick:
        args.sites, args.rounds, args.z = 20, 3, "1.0"
    with Tee() as tee:
        run(args)
    if args.save:
        emit(f"saved {write_result('dp-accuracy', tee.text())}")


def run(args: argparse.Namespace) -> None:
    header("accuracy against epsilon: central DP-FedAvg, softmax regression on MNIST")
    emit(
        f"{args.sites} sites (IID shards), {args.fraction:g} asked per round, {args.rounds} rounds, "
        f"1 local epoch (batch 50, lr 0.1), clip norm {args.clip:g}, delta 1e-5"
    )
    base = f"  num_rounds: {args.rounds}\n  sample_fraction: {args.fraction}\n"
    configs = [("fedavg (no DP)", "  name: fedavg\n" + base)]
    for z in (float(v) for v in args.z.split(",")):
        configs.append(
            (
                f"dp_fedavg z={z:g}",
                f"  name: dp_fedavg\n{base}  noise_multiplier: {z}\n  clip_norm: {args.clip}\n"
                "  delta: 1.0e-5\n  noise_seed: 1\n",
            )
        )
    rows = []
    with tempfile.TemporaryDirectory(prefix="shoal-dp-bench-") as tmp:
        folder = Path(tmp)
        (folder / "data").mkdir()
        _write_data(folder / "data", args.sites)
        os.environ["SHOAL_DP_BENCH_DATA"] = str(folder / "data")
        for i, (label, workflow) in enumerate(configs):
            job = _job(folder, f"dp-bench-{i}", workflow)
            t = time.perf_counter()
            result = simulate(
                SimulatorConfig(job_dir=job, num_sites=args.sites, workdir=folder / "runs")
            )
            seconds = time.perf_counter() - t
            if not result.ok:
                raise SystemExit(f"{label}: {result.failure_summary()}")
            lines = [json.loads(x) for x in result.metrics_path.read_text().splitlines()]
            server = lines[-1]["server"]
            eps = server.get("dp_epsilon")
            rows.append(
                [
                    label,
                    "inf" if eps is None else f"{eps:.2f}",
                    f"{server['accuracy']:.4f}",
                    f"{max(x['server']['accuracy'] for x in lines):.4f}",
                    f"{seconds:.1f}",
                ]
            )
    emit()
    table(rows, ["run", "epsilon (delta 1e-5)", "final test accuracy", "best round", "seconds"])


if __name__ == "__main__":
    main()
