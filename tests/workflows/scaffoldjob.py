"""A least-squares job on a non-IID split, where SCAFFOLD's correction shows.

Site ``i`` of ``N`` fits ``w`` (5 numbers) to its own 64 examples, drawn
around its own optimum with one feature scaled up 3x: the sites' optima and
curvatures differ. With 20 local steps a round, FedAvg settles where the
sites' drifts balance, away from the optimum of the mean loss; SCAFFOLD's
control variates cancel the drift and reach it. 4 sites, from zeros, in
float64 (:func:`reference`): FedAvg stays 1.57 from the optimum, SCAFFOLD is
0.077 from it after 10 rounds, 0.002 after 20.

Written by :func:`write_scaffold_job`, with a numpy site script
(``shoal.client.scaffold.ControlVariates``) or a PyTorch one
(``shoal.frameworks.torch.ScaffoldCorrection``); run by the simulator
(tests/workflows) and by real daemons (tests/integration). With
``$FAULT_GATE`` set, the server's evaluate hook marks each round there,
and site scripts mark each task and hold before training while a file
``<site>.hold-r<round>`` exists, so a test can stop a site between rounds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DATA_PY = """
import numpy as np

NUM_SITES = {num_sites}
DIM = 5
LOCAL_STEPS = 20
LR = 0.05


def site_data(index):
    rng = np.random.default_rng([7, index])
    scale = np.ones(DIM)
    scale[index % DIM] = 3.0
    x = rng.normal(size=(64, DIM)) * scale
    w_site = rng.normal(size=DIM) * 2
    y = x @ w_site + 0.1 * rng.normal(size=64)
    return x, y


def optimum():
    data = [site_data(i) for i in range(NUM_SITES)]
    h = sum(x.T @ x / len(y) for x, y in data) / NUM_SITES
    g = sum(x.T @ y / len(y) for x, y in data) / NUM_SITES
    return np.linalg.solve(h, g)


def mean_loss(w):
    return float(np.mean([0.5 * np.mean((x @ w - y) ** 2) for x, y in map(site_data, range(NUM_SITES))]))
"""

MODEL_PY = """
import os
from pathlib import Path

import numpy as np

from data import DIM, mean_loss, optimum


def initial_weights():
    return {"lin.weight": np.zeros((1, DIM), np.float32)}


def evaluate(params, round):
    gate = os.environ.get("FAULT_GATE")
    if gate:
        Path(gate, f"server.r{round}.aggregated").touch()
    w = np.asarray(params["lin.weight"], np.float64)[0]
    best = optimum()
    return {"dist": float(np.linalg.norm(w - best)), "excess_loss": mean_loss(w) - mean_loss(best)}
"""

GATE_PY = """
import os
import time
from pathlib import Path


def gate(site, round):
    folder = os.environ.get("FAULT_GATE")
    if not folder:
        return
    Path(folder, f"{site}.r{round}.start").touch()
    deadline = time.monotonic() + 300
    while Path(folder, f"{site}.hold-r{round}").exists() and time.monotonic() < deadline:
        Path(folder, f"{site}.r{round}.waiting").touch()
        time.sleep(0.1)
"""

TRAIN_NUMPY_PY = """
import os

import numpy as np

import shoal.client as fl
from shoal.client.scaffold import ControlVariates
from data import LOCAL_STEPS, LR, site_data
from gate import gate

fl.init()
info = fl.system_info()
x, y = site_data(info["site_index"])
first = True
while fl.is_running():
    task = fl.receive()
    gate(info["site_name"], task.current_round)
    scaffold = bool(task.meta.get("scaffold"))
    cv = ControlVariates(task, fl.state_dir()) if scaffold else None
    w = np.array(task.params["lin.weight"][0], np.float64)
    correction = cv.correction["lin.weight"][0] if cv else 0.0
    for _ in range(LOCAL_STEPS):
        grad = x.T @ (x @ w - y) / len(y)
        w -= LR * (grad + correction)
    params = {"lin.weight": w[None, :].astype(np.float32)}
    extras = cv.update(params, num_steps=LOCAL_STEPS, lr=LR) if cv else {}
    fl.send(fl.FLModel(
        params=params,
        extras=extras,
        num_examples=len(y),
        metrics={
            "c_i_round": float((cv.loaded_round or 0) if cv else 0),
            "first_task_of_process": float(first),
            "pid": float(os.getpid()),
        },
    ))
    first = False
"""

TRAIN_TORCH_PY = """
import numpy as np
import torch

import shoal.client as fl
from shoal.frameworks.torch import ScaffoldCorrection, get_weights, set_weights
from data import DIM, LOCAL_STEPS, LR, site_data

fl.init()
info = fl.system_info()
x_np, y_np = site_data(info["site_index"])
x, y = torch.from_numpy(x_np).float(), torch.from_numpy(y_np).float()
model = torch.nn.ModuleDict({"lin": torch.nn.Linear(DIM, 1, bias=False)})
while fl.is_running():
    task = fl.receive()
    set_weights(model, task.params)
    scaffold = (
        ScaffoldCorrection(model, task, fl.state_dir()) if task.meta.get("scaffold") else None
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    for _ in range(LOCAL_STEPS):
        optimizer.zero_grad()
        (0.5 * ((model["lin"](x)[:, 0] - y) ** 2).mean()).backward()
        if scaffold:
            scaffold.apply()
        optimizer.step()
    extras = scaffold.result(lr=LR) if scaffold else {}
    fl.send(fl.FLModel(params=get_weights(model), extras=extras, num_examples=len(y)))
"""

JOB_YML = """\
name: {name}
min_clients: {min_clients}
workflow:
  name: {workflow}
  num_rounds: {rounds}
  round_timeout_s: 120
client:
  script: {script}
  config: {{scaffold: {scaffold}}}
server:
  initial_weights: "model:initial_weights"
  evaluate: "model:evaluate"
"""


def reference(workflow: str, *, num_sites: int = 4, rounds: int = 10) -> list[float]:
    """Each round's distance to the optimum, of Algorithm 1 of the paper
    (option II) or of FedAvg, run here in float64 on the job's data."""
    import numpy as np

    ns: dict[str, Any] = {}
    exec(DATA_PY.format(num_sites=num_sites), ns)  # noqa: S102 - the job's own data.py
    sites = [ns["site_data"](i) for i in range(num_sites)]
    steps, lr, best = ns["LOCAL_STEPS"], ns["LR"], ns["optimum"]()
    x = np.zeros(ns["DIM"])
    c = np.zeros_like(x)
    c_i = [np.zeros_like(x) for _ in sites]
    out = []
    for _ in range(rounds):
        ys, deltas = [], []
        for i, (a, b) in enumerate(sites):
            y = x.copy()
            for _ in range(steps):
                g = a.T @ (a @ y - b) / len(b)
                y -= lr * (g - c_i[i] + c if workflow == "scaffold" else g)
            new = c_i[i] - c + (x - y) / (steps * lr)
            deltas.append(new - c_i[i])
            c_i[i] = new
            ys.append(y)
        x = np.mean(ys, axis=0)
        c = c + np.sum(deltas, axis=0) / num_sites
        out.append(float(np.linalg.norm(x - best)))
    return out


def write_scaffold_job(
    folder: Path,
    *,
    workflow: str = "scaffold",
    framework: str = "numpy",
    num_sites: int = 4,
    rounds: int = 10,
    min_clients: int | None = None,
) -> Path:
    """The job in ``folder``; its sites apply SCAFFOLD's correction when
    ``workflow`` is ``scaffold`` (and train plainly under ``fedavg``)."""
    app = folder / "app"
    app.mkdir(parents=True)
    (app / "data.py").write_text(DATA_PY.format(num_sites=num_sites))
    (app / "model.py").write_text(MODEL_PY)
    (app / "gate.py").write_text(GATE_PY)
    script = "train.py"
    (app / script).write_text(TRAIN_NUMPY_PY if framework == "numpy" else TRAIN_TORCH_PY)
    (folder / "job.yml").write_text(
        JOB_YML.format(
            name=f"lsq-{workflow}",
            workflow=workflow,
            rounds=rounds,
            script=script,
            scaffold="true" if workflow == "scaffold" else "false",
            min_clients=num_sites if min_clients is None else min_clients,
        )
    )
    return folder
