"""Cyclic weight transfer with the in-memory Communicator: the model visits
the sites one after another, each training what the previous one returned."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shoal.arrays import load_arrays
from shoal.errors import JobFailedError, JobValidationError
from shoal.filters import FilterSpec
from shoal.jobs import ClientAppSpec, JobSpec, ServerAppSpec, WorkflowSpec
from shoal.workflows import WorkflowContext, check_spec, get_workflow, parse_params
from shoal.workflows.cyclic import CyclicParams, visit_order

from .fakes import FakeComm, SiteFn

MODEL_PY = """\
import numpy as np

def initial():
    return {"w": np.zeros(2, np.float64)}
"""

EVALUATE_PY = """\
def evaluate(params, round):
    return {"w0": float(params["w"][0])}
"""


def affine(
    scale: float, offset: float, n: int, seen: list[tuple[str, int, float]], name: str
) -> SiteFn:
    """A site whose training maps w to ``scale * w + offset``: the order of
    the visits shows in the result. Records what it received."""

    def fn(g: dict[str, np.ndarray], rnd: int) -> Any:
        seen.append((name, rnd, float(g["w"][0])))
        return {"w": g["w"] * scale + offset}, n, {"loss": offset}

    return fn


def _sites(seen: list[tuple[str, int, float]]) -> dict[str, SiteFn]:
    return {
        "site-1": affine(2.0, 1.0, 10, seen, "site-1"),
        "site-2": affine(3.0, 0.0, 30, seen, "site-2"),
        "site-3": affine(1.0, 5.0, 60, seen, "site-3"),
    }


def _spec(min_clients: int = 2, **params: Any) -> JobSpec:
    return JobSpec(
        name="cyc",
        min_clients=min_clients,
        workflow=WorkflowSpec(name="cyclic", params={"num_rounds": 2, **params}),
        client=ClientAppSpec(script="train.py"),
        server=ServerAppSpec(initial_weights="model:initial", evaluate="evaluate:evaluate"),
    )


def _run(
    tmp_path: Path, sites: dict[str, SiteFn], spec: JobSpec | None = None, **kw: Any
) -> FakeComm:
    app = tmp_path / "app"
    app.mkdir(parents=True, exist_ok=True)
    (app / "model.py").write_text(MODEL_PY)
    (app / "evaluate.py").write_text(EVALUATE_PY)
    (tmp_path / "results").mkdir(exist_ok=True)
    comm = FakeComm(site_fns=sites, results_dir=tmp_path / "results", **kw)
    spec = spec or _spec()
    ctx = WorkflowContext(
        job_id="job-1",
        spec=spec,
        params=spec.workflow.params,
        app_dir=app,
        run_dir=tmp_path / "run",
        comm=comm,
    )
    get_workflow("cyclic")(ctx)
    return comm


def _lines(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def test_the_model_visits_each_site_in_turn(tmp_path: Path) -> None:
    seen: list[tuple[str, int, float]] = []
    comm = _run(tmp_path, _sites(seen))
    run = tmp_path / "run"
    # By hand, fixed order site-1, site-2, site-3: w -> 2w + 1 -> 3(.) -> (.) + 5.
    # Round 1 from 0: 1, 3, 8. Round 2 from 8: 17, 51, 56.
    assert seen == [
        ("site-1", 1, 0.0),
        ("site-2", 1, 1.0),
        ("site-3", 1, 3.0),
        ("site-1", 2, 8.0),
        ("site-2", 2, 17.0),
        ("site-3", 2, 51.0),
    ]
    assert [c["sites"] for c in comm.scatters] == [["site-1"], ["site-2"], ["site-3"]] * 2
    assert all(c["task"] == "train" for c in comm.scatters)
    assert comm.scatters[4]["meta"] == {
        "current_round": 2,
        "total_rounds": 2,
        "visit": 2,
        "visits": 3,
    }
    assert comm.scatters[0]["weights_path"].name == "global_round_0000.safetensors"
    assert comm.scatters[3]["weights_path"].name == "global_round_0001.safetensors"
    assert comm.finished
    np.testing.assert_array_equal(
        load_arrays(run / "models" / "global_round_0001.safetensors")["w"], [8.0, 8.0]
    )
    np.testing.assert_array_equal(
        load_arrays(run / "models" / "global_final.safetensors")["w"], [56.0, 56.0]
    )
    assert not (run / "models" / ".visit.safetensors").exists()

    first, second = _lines(tmp_path)
    assert first["order"] == ["site-1", "site-2", "site-3"] and first["missing"] == []
    assert first["num_examples"] == 100
    # Weighted by examples: (1*10 + 0*30 + 5*60) / 100.
    assert first["aggregated"] == {"loss": pytest.approx(3.1)}
    assert first["sites"]["site-3"] == {"loss": 5.0}
    assert first["server"] == {"w0": 8.0} and second["server"] == {"w0": 56.0}
    assert json.loads((run / "checkpoint.json").read_text())["round"] == 2


def test_shuffled_order_is_seeded_per_round(tmp_path: Path) -> None:
    seen: list[tuple[str, int, float]] = []
    comm = _run(tmp_path, _sites(seen), _spec(num_rounds=6, order="shuffled", seed=11))
    params = CyclicParams(num_rounds=6, order="shuffled", seed=11)
    sites = ["site-1", "site-2", "site-3"]
    orders = [visit_order(sites, k, params, min_clients=2) for k in range(1, 7)]
    assert [c["sites"][0] for c in comm.scatters] == [s for order in orders for s in order]
    assert all(sorted(o) == sites for o in orders) and len({tuple(o) for o in orders}) > 1
    assert [line["order"] for line in _lines(tmp_path)] == orders
    # The same seed, the same orders; another seed, others.
    assert orders == [visit_order(sites, k, params, min_clients=2) for k in range(1, 7)]
    other = CyclicParams(num_rounds=6, order="shuffled", seed=12)
    assert orders != [visit_order(sites, k, other, min_clients=2) for k in range(1, 7)]
    # The final model is what the visits in that order computed.
    w = 0.0
    steps = {"site-1": lambda x: 2 * x + 1, "site-2": lambda x: 3 * x, "site-3": lambda x: x + 5}
    for order in orders:
        for site in order:
            w = steps[site](w)
    final = load_arrays(tmp_path / "run" / "models" / "global_final.safetensors")["w"]
    assert final[0] == w


def test_a_silent_or_refused_site_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[tuple[str, int, float]] = []
    sites = _sites(seen)
    sites["site-2"] = lambda g, rnd: None
    sites["site-3"] = lambda g, rnd: ({"w": np.zeros(3)}, 10, {})  # the wrong shape
    sites["site-4"] = affine(1.0, 5.0, 60, seen, "site-4")
    with caplog.at_level(logging.WARNING):
        _run(tmp_path, sites, _spec(num_rounds=1))
    assert "round 1: site-2 skipped: no answer within 600 s" in caplog.text
    assert "round 1: refused the result of site-3, skipped" in caplog.text
    # site-4 got site-1's model: the skipped ones changed nothing.
    assert seen == [("site-1", 1, 0.0), ("site-4", 1, 1.0)]
    (line,) = _lines(tmp_path)
    assert line["missing"] == ["site-2", "site-3"] and sorted(line["sites"]) == ["site-1", "site-4"]
    final = load_arrays(tmp_path / "run" / "models" / "global_final.safetensors")
    np.testing.assert_array_equal(final["w"], [6.0, 6.0])


def test_too_few_valid_visits_fail_the_round(tmp_path: Path) -> None:
    seen: list[tuple[str, int, float]] = []
    sites = _sites(seen)
    good = sites["site-1"]
    sites["site-2"] = lambda g, rnd: None
    sites["site-3"] = lambda g, rnd: None if rnd == 2 else good(g, rnd)
    with pytest.raises(
        JobFailedError,
        match=r"round 2: only 1 of the required min_clients=2 sites returned a valid result "
        r"\(skipped: site-2 \(no answer",
    ):
        _run(tmp_path, sites)
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["round"] == 1


def test_a_run_cut_short_resumes_after_its_last_round(tmp_path: Path) -> None:
    whole: list[tuple[str, int, float]] = []
    _run(tmp_path / "whole", _sites(whole), _spec(num_rounds=3, order="shuffled", seed=5))
    expected = load_arrays(tmp_path / "whole" / "run" / "models" / "global_final.safetensors")

    seen: list[tuple[str, int, float]] = []
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(
            tmp_path / "cut",
            _sites(seen),
            _spec(num_rounds=3, order="shuffled", seed=5),
            crash_in_round=2,
        )
    assert json.loads((tmp_path / "cut" / "run" / "checkpoint.json").read_text())["round"] == 1
    resumed: list[tuple[str, int, float]] = []
    comm = _run(tmp_path / "cut", _sites(resumed), _spec(num_rounds=3, order="shuffled", seed=5))
    # Rounds 2 and 3 only, in the same orders, from round 1's model.
    assert [c["round"] for c in comm.scatters] == [2, 2, 2, 3, 3, 3]
    assert resumed == [v for v in whole if v[1] >= 2]
    final = load_arrays(tmp_path / "cut" / "run" / "models" / "global_final.safetensors")
    np.testing.assert_array_equal(final["w"], expected["w"])
    assert [line["round"] for line in _lines(tmp_path / "cut")] == [1, 2, 3]


def test_params_and_job_checks() -> None:
    p = parse_params("cyclic", {"num_rounds": 2})
    assert p.order == "fixed" and p.seed == 0 and p.evaluate_after is False
    with pytest.raises(JobValidationError, match="workflow.order: must be one of fixed, shuffled"):
        parse_params("cyclic", {"num_rounds": 2, "order": "random"})
    check_spec("cyclic", _spec())
    filtered = JobSpec(
        **{**_spec().__dict__, "filters": {"result_in": (FilterSpec(name="identity"),)}}
    )
    with pytest.raises(JobValidationError, match="filters.result_in: the cyclic workflow"):
        check_spec("cyclic", filtered)
    no_model = JobSpec(**{**_spec().__dict__, "server": ServerAppSpec()})
    with pytest.raises(
        JobValidationError, match="cyclic needs server.model or server.initial_weights"
    ):
        check_spec("cyclic", no_model)
