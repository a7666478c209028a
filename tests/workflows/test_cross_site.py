"""Cross-site evaluation with the in-memory Communicator: standalone
(``cross_site_eval``) and as a training job's last phase (``evaluate_after``),
the matrix checked against values computed here."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shoal import evalmatrix
from shoal.arrays import load_arrays
from shoal.errors import JobFailedError, JobValidationError
from shoal.filters import FilterSpec
from shoal.jobs import ClientAppSpec, JobSpec, ServerAppSpec, WorkflowSpec
from shoal.workflows import WorkflowContext, check_spec, get_workflow, parse_params

from .fakes import FakeComm, shift

MODEL_PY = """\
import numpy as np

def initial():
    return {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}
"""

SITES = ("site-1", "site-2", "site-3")


def own_model(site: str, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Site-k's local model: the given one plus k."""
    k = float(site.rsplit("-", 1)[1])
    return {name: (v + k).astype(v.dtype) for name, v in given.items()}


def score(params: dict[str, np.ndarray], site: str) -> dict[str, float]:
    """Site-k's metric of a model: the model's mean weight times 10, plus k."""
    k = float(site.rsplit("-", 1)[1])
    return {"loss": float(params["w"].mean()) * 10 + k}


def submit(site: str, params: dict[str, np.ndarray], meta: dict[str, Any]) -> Any:
    return own_model(site, params), 0, {}


def validate(site: str, params: dict[str, np.ndarray], meta: dict[str, Any]) -> Any:
    return {}, 10 * int(site.rsplit("-", 1)[1]), score(params, site)


def _spec(workflow: str = "cross_site_eval", min_clients: int = 2, **params: Any) -> JobSpec:
    return JobSpec(
        name="xs",
        min_clients=min_clients,
        workflow=WorkflowSpec(name=workflow, params=params),
        client=ClientAppSpec(script="train.py"),
        server=ServerAppSpec(initial_weights="model:initial"),
    )


def _run(
    tmp_path: Path,
    spec: JobSpec,
    *,
    task_fns: dict[str, Any] | None = None,
    site_fns: dict[str, Any] | None = None,
) -> FakeComm:
    app = tmp_path / "app"
    app.mkdir(exist_ok=True)
    (app / "model.py").write_text(MODEL_PY)
    (tmp_path / "results").mkdir(exist_ok=True)
    comm = FakeComm(
        site_fns=site_fns or dict.fromkeys(SITES),  # type: ignore[arg-type]
        results_dir=tmp_path / "results",
        task_fns=task_fns or {"submit_model": submit, "validate": validate},
    )
    ctx = WorkflowContext(
        job_id="job-1",
        spec=spec,
        params=spec.workflow.params,
        app_dir=app,
        run_dir=tmp_path / "run",
        comm=comm,
    )
    get_workflow(spec.workflow.name)(ctx)
    return comm


def _matrix(tmp_path: Path) -> dict[str, Any]:
    doc = json.loads((tmp_path / "run" / evalmatrix.FILE_NAME).read_text())
    assert evalmatrix.check_matrix(doc) == doc  # what the workflow writes has the shape
    return doc


def _expected_cells(given: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    models = {"global": given, **{s: own_model(s, given) for s in SITES}}
    return {
        m: {s: {"num_examples": 10 * int(s[-1]), "metrics": score(params, s)} for s in SITES}
        for m, params in models.items()
    }


def test_every_model_evaluated_at_every_site(tmp_path: Path) -> None:
    comm = _run(tmp_path, _spec())
    run = tmp_path / "run"
    # Local models first, then each model in turn, the global one first.
    assert [(c["task"], c["meta"].get("model_owner")) for c in comm.scatters] == [
        ("submit_model", "global"),
        ("validate", "global"),
        ("validate", "site-1"),
        ("validate", "site-2"),
        ("validate", "site-3"),
    ]
    assert all(c["sites"] == list(SITES) and c["round"] == 0 for c in comm.scatters)
    assert comm.scatters[0]["weights_path"] == run / "models" / "evaluated.safetensors"
    assert comm.scatters[2]["weights_path"] == run / "cross_site" / "site-1.safetensors"
    assert comm.finished
    # Each site's model as it sent it.
    zeros = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}
    saved = load_arrays(run / "cross_site" / "site-2.safetensors")
    np.testing.assert_array_equal(saved["w"], np.full((2, 3), 2.0, np.float32))

    doc = _matrix(tmp_path)
    assert doc["global_model"] == "initial"
    assert doc["models"] == ["global", *SITES] and doc["sites"] == list(SITES)
    assert doc["results"] == _expected_cells(zeros)
    # By hand: site-3's model (weights 3) evaluated at site-1: 3 * 10 + 1.
    assert doc["results"]["site-3"]["site-1"]["metrics"] == {"loss": 31.0}
    assert doc["missing"] == {} and doc["not_submitted"] == {}
    assert comm.reports[-1]["status"] == "cross_site_done"


def test_missing_models_and_cells_say_why(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def submit_some(site: str, params: dict[str, np.ndarray], meta: dict[str, Any]) -> Any:
        if site == "site-1":
            return None  # never answers
        if site == "site-2":
            return {"w": np.zeros((3, 2), np.float32), "b": params["b"]}, 0, {}
        return submit(site, params, meta)

    def validate_some(site: str, params: dict[str, np.ndarray], meta: dict[str, Any]) -> Any:
        if site == "site-2" and meta["model_owner"] == "site-3":
            return params, 10, {"loss": 0.0}  # weights instead of metrics
        return validate(site, params, meta)

    with caplog.at_level(logging.WARNING):
        _run(tmp_path, _spec(), task_fns={"submit_model": submit_some, "validate": validate_some})
    doc = _matrix(tmp_path)
    assert doc["models"] == ["global", "site-3"]
    assert doc["not_submitted"]["site-1"] == "no answer within 600 s (or the site left)"
    assert doc["not_submitted"]["site-2"].startswith("refused: ")
    assert "shape" in doc["not_submitted"]["site-2"]
    assert sorted(doc["results"]["site-3"]) == ["site-1", "site-3"]
    assert doc["missing"] == {
        "site-3": {"site-2": doc["missing"]["site-3"]["site-2"]},
    }
    assert "carries metrics, no weights" in doc["missing"]["site-3"]["site-2"]
    assert not (tmp_path / "run" / "cross_site" / "site-2.safetensors").exists()


def test_too_few_evaluations_of_the_global_model_fail_the_job(tmp_path: Path) -> None:
    def validate_one(site: str, params: dict[str, np.ndarray], meta: dict[str, Any]) -> Any:
        return validate(site, params, meta) if site == "site-1" else None

    with pytest.raises(
        JobFailedError,
        match=r"only 1 of the required min_clients=2 sites evaluated the global model "
        r"\(site-2: no answer",
    ):
        _run(tmp_path, _spec(), task_fns={"submit_model": submit, "validate": validate_one})
    # The row that arrived is recorded.
    assert list(_matrix(tmp_path)["results"]["global"]) == ["site-1"]


def test_evaluate_after_training_uses_the_final_model(tmp_path: Path) -> None:
    shifts = {"site-1": shift(1.0, 100), "site-2": shift(3.0, 300), "site-3": shift(2.0, 600)}
    spec = _spec("fedavg", num_rounds=2, evaluate_after=True)
    comm = _run(tmp_path, spec, site_fns=shifts)
    run = tmp_path / "run"
    tasks = [c["task"] for c in comm.scatters]
    assert tasks == ["train", "train", "submit_model"] + ["validate"] * 4
    # Each round's weighted shift: (1*100 + 3*300 + 2*600) / 1000 = 2.2.
    final = load_arrays(run / "models" / "global_final.safetensors")
    np.testing.assert_allclose(final["w"], np.full((2, 3), 4.4, np.float32))
    submit_task = comm.scatters[2]
    assert submit_task["weights_path"] == run / "models" / "global_final.safetensors"
    assert submit_task["round"] == 2 and submit_task["meta"]["total_rounds"] == 2
    doc = _matrix(tmp_path)
    assert doc["global_model"] == "final"
    given = {k: np.asarray(v) for k, v in final.items()}
    expected = _expected_cells(given)
    for model, row in expected.items():
        for site, cell in row.items():
            got = doc["results"][model][site]
            assert got["num_examples"] == cell["num_examples"]
            assert got["metrics"]["loss"] == pytest.approx(cell["metrics"]["loss"], rel=1e-6)
    # The training itself is FedAvg's as before.
    assert json.loads((run / "checkpoint.json").read_text())["round"] == 2
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_job_checks() -> None:
    check_spec("cross_site_eval", _spec())
    assert parse_params("fedavg", {"num_rounds": 1}).evaluate_after is False
    assert parse_params("fedavg", {"num_rounds": 1, "evaluate_after": True}).evaluate_after
    with pytest.raises(JobValidationError, match="workflow.evaluate_after: must be true or false"):
        parse_params("fedavg", {"num_rounds": 1, "evaluate_after": "yes"})
    with pytest.raises(JobValidationError, match="unknown cross_site_eval parameter"):
        check_spec("cross_site_eval", _spec(num_rounds=2))
    filtered = JobSpec(
        name="xs",
        min_clients=1,
        workflow=WorkflowSpec(name="fedavg", params={"num_rounds": 1, "evaluate_after": True}),
        client=ClientAppSpec(script="train.py"),
        server=ServerAppSpec(initial_weights="model:initial"),
        filters={"model_out": (FilterSpec(name="identity"),)},
    )
    with pytest.raises(JobValidationError, match="workflow.evaluate_after: the cross-site"):
        check_spec("fedavg", filtered)
    # Without evaluate_after the filter is FedAvg's business as before.
    check_spec(
        "fedavg",
        JobSpec(**{**filtered.__dict__, "workflow": WorkflowSpec("fedavg", {"num_rounds": 1})}),
    )


def test_a_stored_matrix_is_read_back_only_in_its_shape() -> None:
    doc = {
        "global_model": "final",
        "models": ["global", "site-1", 7],
        "sites": ["site-1"],
        "results": {
            "global": {
                "site-1": {"num_examples": 5, "metrics": {"loss": 0.5, "x": "y", "n": 1e400}},
                "site-9": {"num_examples": 5, "metrics": {}},
            },
            "site-1": {"site-1": {"num_examples": "5", "metrics": {}}},
            "intruder": {"site-1": {"num_examples": 1, "metrics": {}}},
        },
        "missing": {"site-1": {"site-1": "timed out", "site-2": "?"}, "global": 3},
        "not_submitted": ["site-1"],
        "extra": {"anything": True},
    }
    assert evalmatrix.check_matrix(doc) == {
        "global_model": "final",
        "models": ["global", "site-1"],
        "sites": ["site-1"],
        "results": {"global": {"site-1": {"num_examples": 5, "metrics": {"loss": 0.5}}}},
        "missing": {"site-1": {"site-1": "timed out"}},
        "not_submitted": {},
    }
    for bad in ([], {"models": [], "sites": ["a"]}, {"models": ["global"]}):
        with pytest.raises(ValueError, match=r"not a JSON object|non-empty lists"):
            evalmatrix.check_matrix(bad)
    assert evalmatrix.global_label(["site-1"]) == "global"
    assert evalmatrix.global_label(["global"]) == "global (server)"
