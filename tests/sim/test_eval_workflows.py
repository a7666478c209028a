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

from shoal.arrays import load_arrays
from shoal.cli.app import main
from shoal.testing import run_simulation

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


def _train(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """What hello-numpy's script does with a train task (its job args: 10 steps, lr 0.1)."""
    w = np.array(params["w"], dtype=np.float64)
    b = np.array(params["b"], dtype=np.float64)
    for _ in range(10):
        err = x @ w + b[0] - y
        w -= 0.1 * 2 * x.T @ err / len(y)
        b -= 0.1 * 2 * err.mean()
    return {"w": w, "b": b}


def _check_matrix(
    doc: dict[str, object], models: dict[str, dict[str, np.ndarray]], num_sites: int
) -> None:
    """Every cell is the model's loss on that site's data, computed here."""
    example = _example_model()
    sites = [f"site-{i + 1}" for i in range(num_sites)]
    data = {s: example.make_data(seed=i, n=64) for i, s in enumerate(sites)}
    assert doc["models"] == list(models) and doc["sites"] == sites
    results = doc["results"]
    assert isinstance(results, dict)
    for model, params in models.items():
        for site in sites:
            cell = results[model][site]
            assert cell["num_examples"] == 64
            expected = example.mse(params, *data[site])
            assert cell["metrics"]["loss"] == pytest.approx(expected, rel=1e-9), (model, site)
    assert doc["missing"] == {} and doc["not_submitted"] == {}


def test_cross_site_eval_of_the_initial_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = hello_numpy_job(tmp_path / "job", "name: cross_site_eval\nround_timeout_s: 60")
    assert main(["simulate", str(job), "-n", "3", "-w", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "submit_model: 3/3 sites" in out and out.count("validate: 3/3 sites") == 4
    run = tmp_path / "out" / "hello-numpy"
    doc = json.loads((run / "cross_site_eval.json").read_text())
    assert doc["global_model"] == "initial"
    # Sites that never trained answer submit_model by training the given model once.
    example = _example_model()
    zero = example.initial_weights()
    models = {"global": zero}
    for i in range(3):
        models[f"site-{i + 1}"] = _train(zero, *example.make_data(seed=i, n=64))
    _check_matrix(doc, models, 3)


def test_fedavg_with_evaluate_after(tmp_path: Path) -> None:
    job = hello_numpy_job(
        tmp_path / "job", "name: fedavg\nnum_rounds: 3\nround_timeout_s: 60\nevaluate_after: true"
    )
    result = run_simulation(job, 2, tmp_path / "out")
    assert [r.task for r in result.rounds] == ["train"] * 3 + ["submit_model"] + ["validate"] * 3
    # Training is FedAvg's as before: three rounds, a final model, its evaluation.
    assert result.final_metrics["weight_error"] < 0.5
    run = result.run_dir
    final = load_arrays(run / "models" / "global_final.safetensors")
    before = load_arrays(run / "models" / "global_round_0002.safetensors")
    example = _example_model()
    # Each site's model: its round-3 training of the round-2 global model.
    models = {"global": final}
    for i in range(2):
        local = _train(before, *example.make_data(seed=i, n=64))
        saved = load_arrays(run / "cross_site" / f"site-{i + 1}.safetensors")
        np.testing.assert_allclose(saved["w"], local["w"], rtol=1e-12)
        models[f"site-{i + 1}"] = local
    doc = json.loads((run / "cross_site_eval.json").read_text())
    assert doc["global_model"] == "final"
    _check_matrix(doc, models, 2)


@pytest.mark.parametrize("order", ["fixed", "shuffled"])
def test_cyclic_visits_the_sites_in_turn(tmp_path: Path, order: str) -> None:
    job = hello_numpy_job(
        tmp_path / "job",
        f"name: cyclic\nnum_rounds: 3\nround_timeout_s: 60\norder: {order}\nseed: 4",
    )
    result = run_simulation(job, 3, tmp_path / "out")
    # One task per visit: three visits a round, one site each.
    assert [(r.round, r.asked, r.answered) for r in result.rounds] == [
        (k, 1, 1) for k in (1, 2, 3) for _ in range(3)
    ]
    lines = [json.loads(x) for x in result.metrics_path.read_text().splitlines()]
    orders = [line["order"] for line in lines]
    assert all(sorted(o) == ["site-1", "site-2", "site-3"] for o in orders)
    if order == "fixed":
        assert orders == [["site-1", "site-2", "site-3"]] * 3
    # By hand: each site trains what the one before it returned.
    example = _example_model()
    model = example.initial_weights()
    for visits in orders:
        for site in visits:
            model = _train(model, *example.make_data(seed=int(site[-1]) - 1, n=64))
    final = load_arrays(result.models_dir / "global_final.safetensors")
    np.testing.assert_allclose(final["w"], model["w"], rtol=1e-12)
    np.testing.assert_allclose(final["b"], model["b"], rtol=1e-12)
    assert result.final_metrics["loss"] == pytest.approx(example.evaluate(model, 3)["loss"])
