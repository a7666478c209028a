"""SCAFFOLD's server side (Karimireddy et al. 2020, Algorithm 1): the update
by hand over two rounds, through the round driver with an in-memory
communicator (c down with the model, delta c_i up as extras, c checkpointed
and resumed), refusals, and the driver's extras seam left untouched by FedAvg.

The numbers, N = 4 sites in the job, two of them answering, server_lr 0.5:

round 1: x0 = [0, 0], c0 = 0 (no extras in the task)
  site-1: y = [1, 2], delta c = [0.5, -1]    (10 examples)
  site-2: y = [3, 6], delta c = [1.5,  1]    (30 examples: ignored, uniform mean)
  mean y = [2, 4];  x1 = x0 + 0.5 * ([2, 4] - x0) = [1, 2]
  c1 = c0 + (1/4) * ([0.5, -1] + [1.5, 1]) = [0.5, 0]
round 2: the task carries c/w = [0.5, 0]
  site-1: y = x1 + [1,  1], delta c = [ 1, 2]
  site-2: y = x1 + [3, -1], delta c = [-3, 2]
  x2 = x1 + 0.5 * [2, 0] = [2, 2]
  c2 = c1 + (1/4) * [-2, 4] = [0, 1]
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shoal.arrays import load_arrays
from shoal.errors import ArrayFormatError, JobFailedError, JobValidationError
from shoal.jobs import ClientAppSpec, JobSpec, ServerAppSpec, WorkflowSpec
from shoal.taskmeta import EXTRAS_PREFIX, join_extras, split_extras
from shoal.workflows import WorkflowContext, get_workflow, parse_params
from shoal.workflows.scaffold import (
    ScaffoldAggregator,
    ScaffoldParams,
    scaffold_update,
    server_control_variate,
)
from shoal.workflows.store import RoundStore

from .fakes import FakeComm, SiteFn, shift

MODEL_PY = """\
import numpy as np

def initial():
    return {"w": np.zeros(2, np.float32), "step": np.array(0, np.int64)}
"""

F = np.float32

#: What each answering site does in rounds 1 and 2: (y - x, delta c).
MOVES = {
    "site-1": {1: ([1, 2], [0.5, -1]), 2: ([1, 1], [1, 2])},
    "site-2": {1: ([3, 6], [1.5, 1]), 2: ([3, -1], [-3, 2])},
}


def _app(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    app.mkdir(exist_ok=True)
    (app / "model.py").write_text(MODEL_PY)
    return app


def _ctx(
    tmp_path: Path, comm: FakeComm, *, run_dir: str = "run", min_clients: int = 2, **params: Any
) -> WorkflowContext:
    spec = JobSpec(
        name="t",
        min_clients=min_clients,
        workflow=WorkflowSpec(name="scaffold", params={}),
        client=ClientAppSpec(script="train.py"),
        server=ServerAppSpec(initial_weights="model:initial"),
    )
    return WorkflowContext(
        job_id="job-1",
        spec=spec,
        params={"num_rounds": 2, "server_lr": 0.5, **params},
        app_dir=_app(tmp_path),
        run_dir=tmp_path / run_dir,
        comm=comm,
    )


def _site(name: str, seen: dict[tuple[str, int], dict[str, np.ndarray]]) -> SiteFn:
    """A SCAFFOLD site of the numbers above; records the extras its tasks bring."""

    def fn(task: dict[str, np.ndarray], rnd: int) -> Any:
        x, extras = split_extras(task)
        seen[(name, rnd)] = extras
        move, delta = MOVES[name][rnd]
        y = {"w": (x["w"] + np.array(move, F)).astype(F), "step": x["step"] + 1}
        n = 10 if name == "site-1" else 30
        return join_extras(y, {"delta_c/w": np.array(delta, F)}), n, {}

    return fn


def _silent(task: dict[str, np.ndarray], rnd: int) -> None:
    return None


def _four_sites(tmp_path: Path, seen: dict[Any, Any], **kw: Any) -> FakeComm:
    (tmp_path / "results").mkdir(exist_ok=True)
    sites = {
        "site-1": _site("site-1", seen),
        "site-2": _site("site-2", seen),
        "site-3": _silent,
        "site-4": _silent,
    }
    return FakeComm(site_fns=sites, results_dir=tmp_path / "results", **kw)


def test_update_by_hand_over_two_rounds() -> None:
    update = scaffold_update(0.5)
    state: dict[str, Any] = {}
    x = {"w": np.zeros(2, F)}
    for rnd, expected_x, expected_c in [(1, [1, 2], [0.5, 0]), (2, [2, 2], [0, 1])]:
        agg = ScaffoldAggregator(4)
        for site in ("site-1", "site-2"):
            move, delta = MOVES[site][rnd]
            y = {"w": (x["w"] + np.array(move, F)).astype(F)}
            agg.add(join_extras(y, {"delta_c/w": np.array(delta, F)}), weight=1000)
        step = update(x, agg.result(), state)
        x, state = step.params, step.state
        np.testing.assert_array_equal(x["w"], np.array(expected_x, F))
        assert sorted(state) == ["c/w"]
        np.testing.assert_array_equal(state["c/w"], np.array(expected_c, F))
        assert x["w"].dtype == F and state["c/w"].dtype == F
    assert server_control_variate(state) == {"c/w": state["c/w"]}
    assert server_control_variate({}) == {}


def test_server_lr_1_is_the_plain_mean_of_the_models() -> None:
    agg = ScaffoldAggregator(2)
    agg.add({"w": np.array([1, 2], F), EXTRAS_PREFIX + "delta_c/w": np.ones(2, F)}, weight=1)
    agg.add({"w": np.array([2, 4], F), EXTRAS_PREFIX + "delta_c/w": np.ones(2, F)}, weight=99)
    step = scaffold_update()({"w": np.zeros(2, F)}, agg.result(), {})
    # Uniform, as the paper's mean over the sampled sites; not (1 + 2*99) / 100.
    np.testing.assert_array_equal(step.params["w"], np.array([1.5, 3], F))
    np.testing.assert_array_equal(step.state["c/w"], np.ones(2, F))


def test_scaffold_through_the_driver(tmp_path: Path) -> None:
    seen: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    comm = _four_sites(tmp_path, seen)
    get_workflow("scaffold")(_ctx(tmp_path, comm))
    run = tmp_path / "run"
    final = load_arrays(run / "models" / "global_final.safetensors", mmap=False)
    assert sorted(final) == ["step", "w"]  # no extras in the model
    np.testing.assert_array_equal(final["w"], np.array([2, 2], F))
    assert int(final["step"]) == 2
    # c down with the model: nothing in round 1 (c = 0), c1 in round 2.
    assert seen[("site-1", 1)] == {} and seen[("site-2", 1)] == {}
    for site in ("site-1", "site-2"):
        assert sorted(seen[(site, 2)]) == ["c/w"]
        np.testing.assert_array_equal(seen[(site, 2)]["c/w"], np.array([0.5, 0], F))
    # Round 1's task is the model file itself; round 2's a published file.
    paths = [s["weights_path"] for s in comm.scatters]
    assert paths[0] == run / "models" / "global_round_0000.safetensors"
    assert paths[1] == run / "published" / "round_0002.safetensors"
    # c is the state, checkpointed with the round.
    store = RoundStore(run)
    ckpt = store.load_checkpoint()
    assert ckpt is not None and ckpt.round == 2
    state = store.load_state(ckpt)
    np.testing.assert_array_equal(state["c/w"], np.array([0, 1], F))


def test_a_resumed_run_gets_c_back(tmp_path: Path) -> None:
    seen: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    with pytest.raises(RuntimeError, match="simulated crash"):
        get_workflow("scaffold")(_ctx(tmp_path, _four_sites(tmp_path, seen, crash_in_round=2)))
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["round"] == 1
    seen.clear()
    again = _four_sites(tmp_path, seen)
    get_workflow("scaffold")(_ctx(tmp_path, again))
    assert [s["round"] for s in again.scatters] == [2]
    np.testing.assert_array_equal(seen[("site-1", 2)]["c/w"], np.array([0.5, 0], F))
    final = load_arrays(tmp_path / "run" / "models" / "global_final.safetensors", mmap=False)
    np.testing.assert_array_equal(final["w"], np.array([2, 2], F))


def _without_delta(task: dict[str, np.ndarray], rnd: int) -> Any:
    x, _ = split_extras(task)
    return {"w": x["w"] + 100, "step": x["step"]}, 10, {}


def _delta_of_a_buffer(task: dict[str, np.ndarray], rnd: int) -> Any:
    x, _ = split_extras(task)
    return join_extras(x, {"delta_c/step": np.array(1, np.int64)}), 10, {}


def _delta_not_a_weight(task: dict[str, np.ndarray], rnd: int) -> Any:
    x, _ = split_extras(task)
    return join_extras(x, {"delta_c/w": np.ones(2, F), "delta_c/v": np.ones(2, F)}), 10, {}


def _delta_wrong_shape(task: dict[str, np.ndarray], rnd: int) -> Any:
    x, _ = split_extras(task)
    return join_extras(x, {"delta_c/w": np.ones(3, F)}), 10, {}


def _delta_nan(task: dict[str, np.ndarray], rnd: int) -> Any:
    x, _ = split_extras(task)
    return join_extras(x, {"delta_c/w": np.array([np.nan, 0], F)}), 10, {}


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (_without_delta, "no control-variate change"),
        (_delta_of_a_buffer, "not a floating weight"),
        (_delta_not_a_weight, "'v' is not a weight"),
        (_delta_wrong_shape, "differs from the weight's float32[2]"),
        (_delta_nan, "NaN"),
    ],
)
def test_a_result_without_a_valid_delta_c_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, bad: SiteFn, reason: str
) -> None:
    seen: dict[Any, Any] = {}
    (tmp_path / "results").mkdir()
    sites = {"site-1": _site("site-1", seen), "site-2": _site("site-2", seen), "site-3": bad}
    comm = FakeComm(site_fns=sites, results_dir=tmp_path / "results")
    with caplog.at_level(logging.WARNING):
        get_workflow("scaffold")(_ctx(tmp_path, comm, num_rounds=1, server_lr=1.0))
    # As if site-3 had not answered: N = 3, the mean of sites 1 and 2.
    final = load_arrays(tmp_path / "run" / "models" / "global_final.safetensors", mmap=False)
    np.testing.assert_array_equal(final["w"], np.array([2, 4], F))
    assert any(
        "refused the result of site-3" in r.message and reason in r.message for r in caplog.records
    ), [r.message for r in caplog.records]


def test_the_aggregator_refuses_a_change_of_names_and_changes_nothing() -> None:
    agg = ScaffoldAggregator(2)
    agg.add({"w": np.ones(2, F), EXTRAS_PREFIX + "delta_c/w": np.ones(2, F)}, weight=1)
    with pytest.raises(ArrayFormatError, match="unlike the round's first result"):
        agg.add(
            {"w": np.full(2, 9, F), "v": np.ones(1, F), EXTRAS_PREFIX + "delta_c/v": np.ones(1, F)},
            weight=1,
        )
    out = agg.result()
    np.testing.assert_array_equal(out["w"], np.ones(2, F))
    np.testing.assert_array_equal(out[EXTRAS_PREFIX + "delta_c/w"], np.full(2, 0.5, F))
    with pytest.raises(ValueError, match="num_sites"):
        ScaffoldAggregator(0)


def test_half_precision_changes_are_summed_in_float32() -> None:
    agg = ScaffoldAggregator(1000)
    d = np.full(1, 1e-3, np.float16)
    for _ in range(1000):
        agg.add({"w": np.zeros(1, np.float16), EXTRAS_PREFIX + "delta_c/w": d}, weight=1)
    step = agg.result()[EXTRAS_PREFIX + "delta_c/w"]
    assert step.dtype == np.float16
    np.testing.assert_allclose(step, 1e-3, rtol=1e-3)


def test_fedavg_publishes_no_file_and_never_sees_extras(tmp_path: Path) -> None:
    # A FedAvg site may send extras (the data job does): they never reach
    # the mean, and FedAvg's tasks are the model files themselves.
    def with_extras(task: Mapping[str, np.ndarray], rnd: int) -> Any:
        params, n, metrics = shift(1.0, 10)(dict(split_extras(task)[0]), rnd)
        return join_extras(params, {"delta_c/w": np.ones(2, F)}), n, metrics

    (tmp_path / "results").mkdir()
    comm = FakeComm(site_fns={"site-1": with_extras}, results_dir=tmp_path / "results")
    ctx = _ctx(tmp_path, comm, min_clients=1)
    ctx.params = {"num_rounds": 2}
    get_workflow("fedavg")(ctx)
    run = tmp_path / "run"
    assert [s["weights_path"] for s in comm.scatters] == [
        run / "models" / "global_round_0000.safetensors",
        run / "models" / "global_round_0001.safetensors",
    ]
    assert not (run / "published").exists()
    final = load_arrays(run / "models" / "global_final.safetensors", mmap=False)
    np.testing.assert_array_equal(final["w"], np.full(2, 2, F))


def test_params() -> None:
    assert parse_params("scaffold", {"num_rounds": 3}) == ScaffoldParams(num_rounds=3)
    assert parse_params("scaffold", {"num_rounds": 3, "server_lr": 2}).server_lr == 2.0
    with pytest.raises(JobValidationError, match=r"^job.yml: workflow.server_lr: must be in \(0"):
        parse_params("scaffold", {"num_rounds": 3, "server_lr": 0})
    with pytest.raises(JobValidationError, match="workflow.lr: unknown scaffold parameter"):
        parse_params("scaffold", {"num_rounds": 3, "lr": 0.1})


def test_docs_list_every_scaffold_parameter() -> None:
    from shoal.workflows.params import param_docs

    doc = Path(__file__).resolve().parents[2] / "docs" / "algorithms.md"
    section = doc.read_text().split("## SCAFFOLD: `scaffold`", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = {name for row in rows for name in row.split("|")[1].split("`")[1::2]}
    assert {d.name for d in param_docs(ScaffoldParams)} == documented


def test_extras_left_in_the_model_fail_the_job(tmp_path: Path) -> None:
    # fold_extras with an update that does not take the extras out: the
    # driver refuses the model rather than publish arrays as weights.
    from shoal.workflows import Policies, run_rounds
    from shoal.workflows.scaffold import ScaffoldParams

    seen: dict[Any, Any] = {}
    comm = _four_sites(tmp_path, seen)
    policies = Policies(aggregator=lambda reuse: ScaffoldAggregator(4), fold_extras=True)
    with pytest.raises(JobFailedError, match="the server update's model is refused"):
        run_rounds(_ctx(tmp_path, comm), ScaffoldParams(num_rounds=1), policies, workflow="x")
    assert not (tmp_path / "run" / "models" / "global_round_0001.safetensors").exists()
