"""A numpy job that uses everything that travels beside the weights: client
configuration down, meta, extras and weight differences up, and a filter at
each of the four points. Written by :func:`write_data_job`; run by the
simulator and by real daemons (tests/filters, tests/integration).

Each site sets its weights to what it received plus one and sends the
difference (all ones) as ``params_type: diff``; the ``model_out`` filter
adds 100 to ``b`` on the way out, which the global model on the server never
sees. So after ``k`` rounds from zeros the global model is ``k`` everywhere,
and each site received ``b = k - 1 + 100`` in round ``k``.
"""

from __future__ import annotations

from pathlib import Path

TRAIN_PY = """
import os

import numpy as np
import shoal.client as fl

fl.init()
info = fl.system_info()
while fl.is_running():
    task = fl.receive()
    assert task.task == "train", task.task
    assert task.meta["site"] == info["site_name"], task.meta
    assert task.meta["task"] == "train", task.meta
    local = {k: np.asarray(v) + 1 for k, v in task.params.items()}
    diff = {k: local[k] - task.params[k] for k in local}
    fl.send(fl.FLModel(
        params=diff,
        params_type="diff",
        num_examples=10 + info["site_index"],
        metrics={
            "lr": float(task.meta["lr"]),
            "task_in_seen": float(task.meta.get("task_in_seen", 0)),
            "received_b": float(task.params["b"][0]),
            "down_extra": float(task.extras["down"][0]),
            "omp_threads": float(os.environ.get("OMP_NUM_THREADS", 0)),
        },
        meta={"site_index": info["site_index"], "note": "hello"},
        extras={"control": np.full(3, info["site_index"], dtype=np.float32)},
    ))
"""

MODEL_PY = """
import numpy as np


def initial_weights():
    return {"w": np.zeros((4, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}
"""

PROBE_PY = '''
"""Test filters: each leaves a mark the test can read back."""
import dataclasses

import numpy as np


class MarkTask:
    """task_in: tells the script it ran."""

    def __call__(self, model, ctx):
        assert ctx.point == "task_in"
        return dataclasses.replace(model, meta={**model.meta, "task_in_seen": 1})


class MarkResult:
    """result_out: adds a meta key the server checks."""

    def __init__(self, value):
        self.value = value

    def __call__(self, model, ctx):
        assert ctx.point == "result_out" and ctx.task == "train"
        return dataclasses.replace(model, meta={**model.meta, "marked": self.value})


class Inspect:
    """result_in: turns what reached the server into metrics."""

    def __call__(self, model, ctx):
        assert ctx.point == "result_in"
        metrics = dict(model.metrics)
        metrics["seen_marked"] = float(model.meta.get("marked", -1))
        metrics["seen_site_index"] = float(model.meta["site_index"])
        metrics["seen_diff"] = float(model.params_type == "diff")
        metrics["seen_control"] = float(model.extras["control"][0])
        return dataclasses.replace(model, metrics=metrics)


class Publish:
    """model_out: what the sites get is not the server's own model."""

    def __call__(self, model, ctx):
        assert ctx.point == "model_out"
        params = dict(model.params)
        params["b"] = params["b"] + 100
        # Arrays beside the weights, down to the sites.
        extras = {"down": np.full(2, ctx.round, dtype=np.float32)}
        return dataclasses.replace(model, params=params, extras=extras)
'''

JOB_YML = """\
name: datajob
min_clients: 2
workflow:
  name: fedavg
  num_rounds: {rounds}
client:
  script: train.py
  config: {{lr: 0.25}}
server:
  initial_weights: "model:initial_weights"
filters:
  task_in: ["probe:MarkTask"]
  result_out: [identity, {{filter: "probe:MarkResult", args: {{value: 7}}}}]
  result_in: ["probe:Inspect"]
  model_out: ["probe:Publish"]
"""


def write_data_job(folder: Path, *, rounds: int = 2) -> Path:
    app = folder / "app"
    app.mkdir(parents=True)
    (app / "train.py").write_text(TRAIN_PY)
    (app / "model.py").write_text(MODEL_PY)
    (app / "probe.py").write_text(PROBE_PY)
    (folder / "job.yml").write_text(JOB_YML.format(rounds=rounds))
    return folder
