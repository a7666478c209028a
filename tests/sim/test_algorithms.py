"""Each shipped algorithm end to end in ``shoal simulate``, on hello-numpy
(federated linear regression, numpy only): it learns the true line, and a
site sending scaled or sign-flipped weights derails FedAvg's mean but not
the robust aggregators."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest

from shoal.testing import run_simulation

from .conftest import HELLO_NUMPY

# hello-numpy's train.py with one site turned Byzantine: the last one trains
# honestly, then sends its weights times --attack-scale (100: scaled, -1:
# sign-flipped) and claims ten times its examples.
ATTACK = """\
import argparse

import numpy as np
from model import make_data, mse

import shoal.client as fl

parser = argparse.ArgumentParser()
parser.add_argument("--attack-scale", type=float, default=1.0)
args = parser.parse_args()
fl.init()
info = fl.system_info()
index, count = info["site_index"], info["num_sites"]
x, y = make_data(seed=index, n=64)
while fl.is_running():
    task = fl.receive()
    w = np.array(task.params["w"], dtype=np.float64)
    b = np.array(task.params["b"], dtype=np.float64)
    for _ in range(10):
        err = x @ w + b[0] - y
        w -= 0.1 * 2 * x.T @ err / len(y)
        b -= 0.1 * 2 * err.mean()
    n = len(y)
    if index == count - 1:
        w, b, n = w * args.attack_scale, b * args.attack_scale, 10 * n
    params = {"w": w, "b": b}
    fl.send(fl.FLModel(params=params, metrics={"loss": mse(params, x, y)}, num_examples=n))
"""


def _job(
    tmp_path: Path, workflow: dict[str, Any], *, min_clients: int = 1, script: str = ""
) -> Path:
    job = tmp_path / "job"
    shutil.copytree(HELLO_NUMPY, job)
    lines = "\n".join(f"  {k}: {v}" for k, v in workflow.items())
    yml = (job / "job.yml").read_text()
    head, _, rest = yml.partition("workflow:\n")
    rest = rest[rest.index("client:") :]
    (job / "job.yml").write_text(
        head.replace("min_clients: 1", f"min_clients: {min_clients}")
        + f"workflow:\n{lines}\n  round_timeout_s: 120\n"
        + rest
    )
    if script:
        (job / "app" / "train.py").write_text(textwrap.dedent(script))
        text = (job / "job.yml").read_text()
        args_line = next(line for line in text.splitlines() if "args:" in line)
        (job / "job.yml").write_text(text.replace(args_line, "  args: []"))
    return job


@pytest.mark.parametrize(
    "workflow",
    [
        # Each site's 10 local steps cover most of the way each round: the
        # server's momentum is kept low (0.3, 0.5) so it does not overshoot.
        {"name": "fedavgm", "num_rounds": 15, "server_lr": 1.0, "server_momentum": 0.3},
        {"name": "fedadam", "num_rounds": 15, "server_lr": 0.1, "beta1": 0.5},
        {"name": "fedyogi", "num_rounds": 15, "server_lr": 0.1, "beta1": 0.5},
        {"name": "fedadagrad", "num_rounds": 15, "server_lr": 1.0, "beta1": 0.5},
        {"name": "fedavg", "num_rounds": 5, "aggregator": "median"},
        {"name": "fedavg", "num_rounds": 5, "aggregator": "multi_krum", "krum_byzantine": 0},
        {
            "name": "fedadam",
            "num_rounds": 15,
            "server_lr": 0.1,
            "beta1": 0.5,
            "aggregator": "trimmed_mean",
            "trim_fraction": 0.25,
        },
    ],
    ids=lambda w: "-".join(str(w.get(k, "")) for k in ("name", "aggregator")).strip("-"),
)
def test_each_algorithm_learns_the_line(tmp_path: Path, workflow: dict[str, Any]) -> None:
    result = run_simulation(_job(tmp_path, workflow, min_clients=3), 4, tmp_path / "out")
    assert len(result.rounds) == workflow["num_rounds"]
    errors = [r.global_metrics["weight_error"] for r in result.rounds]
    # From w = 0, 3.0 off the true w (2, -3, 0.5, 1); FedAvg gets within
    # ~0.01 (each site's own data leaves it 0.007 off).
    assert errors[-1] < 0.05, errors


# hello-numpy's train.py with FedProx's term: its gradient mu * (w - w_global)
# joins each local step, mu from the task's meta.
FEDPROX = """\
import numpy as np
from model import make_data, mse

import shoal.client as fl

fl.init()
x, y = make_data(seed=fl.system_info()["site_index"], n=64)
while fl.is_running():
    task = fl.receive()
    mu = task.meta["fedprox_mu"]
    print("fedprox_mu", mu, flush=True)
    w0, b0 = np.array(task.params["w"]), np.array(task.params["b"])
    w, b = w0.copy(), b0.copy()
    for _ in range(10):
        err = x @ w + b[0] - y
        w -= 0.1 * (2 * x.T @ err / len(y) + mu * (w - w0))
        b -= 0.1 * (2 * err.mean() + mu * (b - b0))
    params = {"w": w, "b": b}
    fl.send(fl.FLModel(params=params, metrics={"loss": mse(params, x, y)}, num_examples=len(y)))
"""


def test_fedprox_sends_mu_and_learns(tmp_path: Path) -> None:
    workflow = {"name": "fedprox", "num_rounds": 8, "mu": 0.5}
    result = run_simulation(_job(tmp_path, workflow, script=FEDPROX), 3, tmp_path / "out")
    assert "fedprox_mu 0.5" in (result.log_dir / "site-2.log").read_text()
    errors = [r.global_metrics["weight_error"] for r in result.rounds]
    # The term slows each round's local progress (mu pulls back to w_global),
    # not where the rounds end up.
    assert errors[-1] < 0.05 and errors[0] > 0.5, errors


@pytest.mark.parametrize(("attack", "scale"), [("scaled", 100), ("flipped", -1)])
def test_a_byzantine_site_derails_fedavg_and_not_the_robust_aggregators(
    tmp_path: Path, attack: str, scale: float
) -> None:
    errors: dict[str, float] = {}
    for aggregator, extra in [
        ("mean", {}),
        ("median", {}),
        ("trimmed_mean", {"trim_fraction": 0.2}),
        ("krum", {"krum_byzantine": 1}),
    ]:
        workflow = {"name": "fedavg", "num_rounds": 5, "aggregator": aggregator, **extra}
        job = _job(tmp_path / aggregator, workflow, min_clients=5, script=ATTACK)
        text = (
            (job / "job.yml")
            .read_text()
            .replace("  args: []", f'  args: [--attack-scale, "{scale}"]')
        )
        (job / "job.yml").write_text(text)
        result = run_simulation(job, 5, tmp_path / aggregator / "out")
        errors[aggregator] = result.final_metrics["weight_error"]
    # The true w is (2, -3, 0.5, 1); four honest sites get within a few
    # hundredths of it. FedAvg's mean, in which the attacker holds 640 of
    # 896 examples, ends far off (scaled: by orders of magnitude).
    assert errors["mean"] > 1.0, (attack, errors)
    for aggregator in ("median", "trimmed_mean", "krum"):
        assert errors[aggregator] < 0.1, (attack, errors)
