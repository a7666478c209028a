"""Cross-site evaluation through real daemons from real kits (mutual TLS on
127.0.0.1): a FedAvg job with ``evaluate_after: true`` trains, collects each
site's model, has every site evaluate every model (results with no arrays
cross the wire), stores the matrix, and ``shoal admin`` and the console show
it. Every cell is checked against the loss this test computes itself from
the downloaded models and hello-numpy's own data. Then an ``evaluate`` job
on the same federation."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from shoal import jobstatus
from shoal.admin.console import AdminConsole
from shoal.arrays import load_arrays
from shoal.cli.app import main

from .conftest import HELLO_NUMPY, Federation
from .test_jobs import JOB_TIMEOUT, numpy_job

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(r"ignore:subprocess \d+ is still running:ResourceWarning"),
]


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "hello_numpy_model", HELLO_NUMPY / "app" / "model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """hello-numpy's train task with its job's args (10 steps, lr 0.1)."""
    w = np.array(params["w"], dtype=np.float64)
    b = np.array(params["b"], dtype=np.float64)
    for _ in range(10):
        err = x @ w + b[0] - y
        w -= 0.1 * 2 * x.T @ err / len(y)
        b -= 0.1 * 2 * err.mean()
    return {"w": w, "b": b}


def _with_workflow(job: Path, lines: str) -> Path:
    text = (job / "job.yml").read_text()
    (job / "job.yml").write_text(
        text.replace("  round_timeout_s: 120\n", f"  round_timeout_s: 120\n{lines}")
    )
    return job


def test_cross_site_evaluation_after_training_through_the_daemons(
    federation: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = federation.admin()
    job = _with_workflow(numpy_job(tmp_path, name="xsite", rounds=2), "  evaluate_after: true\n")
    job_id = s.submit_job(job)
    meta = s.wait_for_job(job_id, timeout=JOB_TIMEOUT)
    assert meta.status == jobstatus.COMPLETED, meta

    run = s.download_job(job_id, tmp_path / "dl") / "run"
    example = _example()
    data = {f"site-{i + 1}": example.make_data(seed=i, n=64) for i in range(2)}
    final = load_arrays(run / "models" / "global_final.safetensors")
    round1 = load_arrays(run / "models" / "global_round_0001.safetensors")
    # Each site's model is its last training: round 2's, from round 1's global model.
    models = {"global": final}
    for site, (x, y) in data.items():
        local = _train(round1, x, y)
        np.testing.assert_allclose(
            load_arrays(run / "cross_site" / f"{site}.safetensors")["w"], local["w"], rtol=1e-12
        )
        models[site] = local
    doc = json.loads((run / "cross_site_eval.json").read_text())
    assert doc["global_model"] == "final"
    assert doc["models"] == ["global", "site-1", "site-2"] and doc["sites"] == ["site-1", "site-2"]
    for model, params in models.items():
        for site, (x, y) in data.items():
            cell = doc["results"][model][site]
            assert cell["num_examples"] == 64
            assert cell["metrics"]["loss"] == pytest.approx(example.mse(params, x, y), rel=1e-9)
    assert doc["missing"] == {} and doc["not_submitted"] == {}

    # The typed answer, the CLI's table and the console's.
    stats = s.show_stats(job_id)
    assert stats.cross_site_eval is not None
    assert (
        stats.cross_site_eval.metrics("site-2", "site-1")
        == doc["results"]["site-2"]["site-1"]["metrics"]
    )
    kit, address = federation.layout.admin_kit, federation.layout.admin_address
    assert main(["admin", "--kit", str(kit), "--server", address, "show_stats", job_id]) == 0
    printed = capsys.readouterr().out
    assert "Cross-site evaluation: rows are models (global: the final global model)" in printed
    rows = [line.split("|")[1:-1] for line in printed.splitlines() if line.startswith("| ")]
    table = {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}
    assert table["MODEL"] == ["site-1", "site-2"]
    for model in ("global", "site-1", "site-2"):
        assert table[model] == [
            f"{doc['results'][model][site]['metrics']['loss']:#.4g}".rstrip(".")
            for site in ("site-1", "site-2")
        ]
    out = io.StringIO()
    AdminConsole(s, stdin=io.StringIO(f"show_stats {job_id}\nbye\n"), stdout=out).run()
    assert "Cross-site evaluation" in out.getvalue() and "| MODEL " in out.getvalue()
    # The sites' logs say which tasks they got.
    site_log = s.get_log(job_id, "site-1")
    assert "getTask: submit_model" in site_log and site_log.count("getTask: validate") == 3


def test_federated_evaluation_through_the_daemons(federation: Federation, tmp_path: Path) -> None:
    s = federation.admin()
    job = numpy_job(tmp_path, name="evalonly", rounds=1)
    text = (
        (job / "job.yml")
        .read_text()
        .replace("  name: fedavg\n  num_rounds: 1\n", "  name: evaluate\n")
    )
    (job / "job.yml").write_text(text)
    job_id = s.submit_job(job)
    meta = s.wait_for_job(job_id, timeout=JOB_TIMEOUT)
    assert meta.status == jobstatus.COMPLETED, meta
    summary = json.loads(
        (s.download_job(job_id, tmp_path / "dl") / "run" / "evaluation.json").read_text()
    )
    example = _example()
    zero = example.initial_weights()
    losses = [example.mse(zero, *example.make_data(seed=i, n=64)) for i in range(2)]
    assert summary["sites"]["site-2"]["metrics"]["loss"] == pytest.approx(losses[1], rel=1e-9)
    assert summary["aggregated"]["loss"] == pytest.approx(np.mean(losses), rel=1e-9)
    # show_stats shows it as round 0, the sites' weighted mean.
    (row,) = s.show_stats(job_id).metrics
    assert row["round"] == 0 and row["aggregated"]["loss"] == pytest.approx(np.mean(losses))
