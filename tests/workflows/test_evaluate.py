"""The evaluate workflow with the in-memory Communicator: one model, every
site evaluates it, the metrics weighted by each site's examples."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shoal.arrays import load_arrays, save_arrays
from shoal.errors import JobFailedError, JobValidationError
from shoal.filters import FilterSpec
from shoal.jobs import ClientAppSpec, JobSpec, ServerAppSpec, WorkflowSpec
from shoal.workflows import WorkflowContext, check_spec, get_workflow, parse_params

from .fakes import FakeComm, TaskFn

MODEL_PY = """\
import numpy as np

def initial():
    return {"w": np.full((2, 3), 0.5, np.float32), "b": np.zeros(3, np.float32)}
"""

#: Site -> (examples, an offset that makes its loss differ).
SITES = {"site-1": (100, 1.0), "site-2": (300, 2.0), "site-3": (600, 4.0)}


def loss_of(params: dict[str, np.ndarray], site: str) -> float:
    """What a site reports: its offset plus the model's mean weight."""
    return SITES[site][1] + float(params["w"].mean())


def evaluator(site: str, params: dict[str, np.ndarray], meta: dict[str, Any]) -> Any:
    n, _ = SITES[site]
    return {}, n, {"loss": loss_of(params, site), "acc": 1.0 / SITES[site][1]}


def _spec(min_clients: int = 2, *, model_path: str = "", **kw: Any) -> JobSpec:
    params = {"model_path": model_path} if model_path else {}
    return JobSpec(
        name="ev",
        min_clients=min_clients,
        workflow=WorkflowSpec(name="evaluate", params=params),
        client=ClientAppSpec(script="train.py"),
        server=ServerAppSpec(initial_weights=None if model_path else "model:initial"),
        **kw,
    )


def _run(
    tmp_path: Path, answer: TaskFn = evaluator, *, spec: JobSpec | None = None, **params: Any
) -> FakeComm:
    app = tmp_path / "app"
    app.mkdir(exist_ok=True)
    (app / "model.py").write_text(MODEL_PY)
    (tmp_path / "results").mkdir(exist_ok=True)
    comm = FakeComm(
        site_fns=dict.fromkeys(SITES, None),  # type: ignore[arg-type]  # never trained
        results_dir=tmp_path / "results",
        task_fns={"validate": answer},
    )
    spec = spec or _spec()
    ctx = WorkflowContext(
        job_id="job-1",
        spec=spec,
        params={**spec.workflow.params, **params},
        app_dir=app,
        run_dir=tmp_path / "run",
        comm=comm,
    )
    get_workflow("evaluate")(ctx)
    return comm


def test_every_site_evaluates_the_model_and_the_mean_is_weighted(tmp_path: Path) -> None:
    comm = _run(tmp_path)
    run = tmp_path / "run"
    # One task, "validate", of the initial model to every site; no training.
    (scatter,) = comm.scatters
    assert scatter["task"] == "validate" and scatter["round"] == 0
    assert scatter["sites"] == sorted(SITES)
    assert scatter["meta"] == {"current_round": 0, "model_owner": "global"}
    assert scatter["weights_path"] == run / "models" / "evaluated.safetensors"
    evaluated = load_arrays(scatter["weights_path"])
    np.testing.assert_array_equal(evaluated["w"], np.full((2, 3), 0.5, np.float32))
    assert comm.finished

    # By hand: losses 1.5, 2.5, 4.5 over 100, 300, 600 examples.
    loss = 1.5 * 0.1 + 2.5 * 0.3 + 4.5 * 0.6
    acc = 1.0 * 0.1 + 0.5 * 0.3 + 0.25 * 0.6
    (line,) = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert line["round"] == 0 and line["num_examples"] == 1000 and line["missing"] == []
    assert line["sites"]["site-2"] == {"loss": 2.5, "acc": 0.5}
    assert line["aggregated"] == pytest.approx({"loss": loss, "acc": acc}, rel=1e-12)

    summary = json.loads((run / "evaluation.json").read_text())
    assert summary["model"] == "initial" and summary["num_examples"] == 1000
    assert summary["sites"]["site-3"] == {
        "num_examples": 600,
        "metrics": {"loss": 4.5, "acc": 0.25},
    }
    assert summary["aggregated"] == line["aggregated"] and summary["missing"] == {}
    done = comm.reports[-1]
    assert done["status"] == "round_done" and done["evaluation"] == line["aggregated"]


def test_a_weights_file_in_app_is_evaluated(tmp_path: Path) -> None:
    (tmp_path / "app" / "models").mkdir(parents=True)
    save_arrays(
        tmp_path / "app" / "models" / "best.safetensors",
        {"w": np.full((2, 3), 2.0, np.float32), "b": np.ones(3, np.float32)},
    )
    _run(tmp_path, spec=_spec(model_path="models/best.safetensors"))
    summary = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert summary["model"] == "app/models/best.safetensors"
    assert summary["sites"]["site-1"]["metrics"]["loss"] == 3.0


def test_a_missing_or_unusable_weights_file_fails_the_job_named(tmp_path: Path) -> None:
    with pytest.raises(JobFailedError, match=r"workflow.model_path 'nope.safetensors': no such"):
        _run(tmp_path, spec=_spec(model_path="nope.safetensors"))
    save_arrays(tmp_path / "app" / "nan.safetensors", {"w": np.array([np.nan], np.float32)})
    with pytest.raises(JobFailedError, match=r"model_path 'nan.safetensors': .*NaN"):
        _run(tmp_path, spec=_spec(model_path="nan.safetensors"))
    save_arrays(tmp_path / "app" / "empty.safetensors", {})
    with pytest.raises(JobFailedError, match=r"model_path 'empty.safetensors': the file holds no"):
        _run(tmp_path, spec=_spec(model_path="empty.safetensors"))


def test_weights_in_a_validate_answer_are_refused_and_a_silent_site_missing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def answer(site: str, params: dict[str, np.ndarray], meta: dict[str, Any]) -> Any:
        if site == "site-1":  # a script that trained instead of evaluating
            return params, 100, {"loss": 0.0}
        if site == "site-2":
            return None
        return evaluator(site, params, meta)

    with caplog.at_level(logging.WARNING):
        comm = _run(tmp_path, answer, spec=_spec(min_clients=1))
    assert "refused the result of site-1" in caplog.text
    summary = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert list(summary["sites"]) == ["site-3"]
    assert summary["aggregated"] == {"loss": 4.5, "acc": 0.25}
    assert summary["missing"]["site-1"].startswith("refused: a 'validate' result carries metrics")
    assert summary["missing"]["site-2"] == "no answer within 600 s (or the site left)"
    assert comm.reports[-1]["sites"] == {"site-1": "missing", "site-2": "missing", "site-3": "ok"}


@pytest.mark.parametrize(
    ("n", "metrics", "reason"),
    [
        (0, {"loss": 1.0}, "num_examples is 0, must be > 0"),
        (10**10, {"loss": 1.0}, "over the job's workflow.max_num_examples"),
        (1.5, {"loss": 1.0}, "must be an integer"),
        (10, {}, "must carry metrics"),
    ],
)
def test_bad_answers_are_refused_and_too_few_fail_the_job(
    tmp_path: Path, n: Any, metrics: dict[str, float], reason: str
) -> None:
    def answer(site: str, params: dict[str, np.ndarray], meta: dict[str, Any]) -> Any:
        return ({}, n, metrics) if site != "site-3" else evaluator(site, params, meta)

    with pytest.raises(JobFailedError, match="only 1 of the required min_clients=2") as err:
        _run(tmp_path, answer)
    assert reason in str(err.value)
    # What did arrive is kept.
    summary = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert list(summary["sites"]) == ["site-3"]


def test_a_non_finite_metric_is_dropped_not_the_answer(tmp_path: Path) -> None:
    def answer(site: str, params: dict[str, np.ndarray], meta: dict[str, Any]) -> Any:
        _, n, m = evaluator(site, params, meta)
        return {}, n, {**m, "loss": float("nan")} if site == "site-1" else m

    _run(tmp_path, answer)
    summary = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert summary["sites"]["site-1"]["metrics"] == {"acc": 1.0}
    # The loss is averaged over the sites that reported one.
    assert summary["aggregated"]["loss"] == pytest.approx(2.5 * 1 / 3 + 4.5 * 2 / 3)


def test_params_and_job_checks() -> None:
    assert parse_params("evaluate", {}).round_timeout_s == 600.0
    for bad in ("../x.safetensors", "/etc/x.safetensors", "model.npz", "a\\b.safetensors"):
        with pytest.raises(JobValidationError, match="job.yml: workflow.model_path"):
            parse_params("evaluate", {"model_path": bad})
    with pytest.raises(JobValidationError, match="unknown evaluate parameter"):
        parse_params("evaluate", {"num_rounds": 3})
    no_model = JobSpec(
        name="ev",
        min_clients=1,
        workflow=WorkflowSpec(name="evaluate"),
        client=ClientAppSpec(script="train.py"),
    )
    with pytest.raises(JobValidationError, match="evaluate needs the model to evaluate"):
        check_spec("evaluate", no_model)
    check_spec("evaluate", _spec(model_path="m.safetensors"))
    filtered = _spec(filters={"model_out": (FilterSpec(name="identity"),)})
    with pytest.raises(JobValidationError, match="filters.model_out: the evaluate workflow"):
        check_spec("evaluate", filtered)
