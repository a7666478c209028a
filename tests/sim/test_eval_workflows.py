"""The evaluate, cross_site_eval and cyclic workflows end to end in the
simulator, on hello-numpy's script and data: each number checked against
one this test computes itself from the example's own data."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from shoal.cli.app import main

from .conftest import HELLO_NUMPY


def _example_model() -> ModuleType:
    """hello-numpy's app/model.py (its data generator and loss), imported by path."""
    spec = importlib.util.spec_from_file_location(
        "hello_numpy_model", HELLO_NUMPY / "app" / "model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hello_numpy_job(folder: Path, workflow: str, *, name: str = "hello-numpy") -> Path:
    """hello-numpy's app with ``workflow`` (YAML lines under ``workflow:``)."""
    shutil.copytree(HELLO_NUMPY / "app", folder / "app")
    (folder / "job.yml").write_text(
        f"name: {name}\n"
        "min_clients: 2\n"
        "workflow:\n"
        + "".join(f"  {line}\n" for line in workflow.strip().splitlines())
        + "client:\n"
        "  script: train.py\n"
        '  args: [--steps, "10", --lr, "0.1"]\n'
        "server:\n"
        '  initial_weights: "model:initial_weights"\n'
        '  evaluate: "model:evaluate"\n'
    )
    return folder


def test_evaluate_the_initial_model_at_three_sites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = hello_numpy_job(tmp_path / "job", "name: evaluate\nround_timeout_s: 60")
    assert main(["simulate", str(job), "-n", "3", "-w", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "validate: 3/3 sites" in out
    assert "0 round(s), 1 evaluation task(s)" in out

    # By hand: the zero model's loss on each site's 64 samples (seeded by its index).
    model = _example_model()
    zero = model.initial_weights()
    losses = [model.mse(zero, *model.make_data(seed=i, n=64)) for i in range(3)]
    run = tmp_path / "out" / "hello-numpy"
    summary = json.loads((run / "evaluation.json").read_text())
    assert summary["model"] == "initial" and summary["num_examples"] == 3 * 64
    for i, loss in enumerate(losses):
        cell = summary["sites"][f"site-{i + 1}"]
        assert cell["num_examples"] == 64
        assert cell["metrics"]["loss"] == pytest.approx(loss, rel=1e-12)
    assert summary["aggregated"]["loss"] == pytest.approx(np.mean(losses), rel=1e-12)
    assert "final global metrics: loss=" in out
    # No training: no round models, no checkpoint.
    assert sorted(p.name for p in (run / "models").iterdir()) == ["evaluated.safetensors"]
