"""FedAvg with hostile numbers: a metric past float32, a num_examples past the
bound. Expected values are computed by hand in the comments."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from shoal.arrays import load_arrays
from shoal.errors import JobFailedError, JobValidationError
from shoal.tensorboard import read_scalars
from shoal.workflows import get_workflow, parse_params
from shoal.workflows.fedavg import DEFAULT_MAX_NUM_EXAMPLES, FedAvgParams

from .fakes import shift
from .test_fedavg import _comm, _ctx, _spec


def _lines(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _scalars(run: Path) -> dict[tuple[str, int], float]:
    (events,) = (run / "tensorboard").glob("events.out.tfevents.*")
    return {(s.tag, s.step): s.value for s in read_scalars(events)}


def test_a_metric_past_float32_is_dropped_not_the_job(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # site-2 reports loss=1e308 (finite, but 1e308 * 300 examples is inf, and
    # TensorBoard's float32 cannot hold it) and an int metric past float's range.
    comm = _comm(
        tmp_path,
        {
            "site-1": shift(1.0, 100, loss=0.5, acc=0.75),
            "site-2": shift(3.0, 300, loss=1e308, big=10**400, acc=0.25),  # type: ignore[arg-type]
        },
    )
    ctx = _ctx(tmp_path, comm)
    with caplog.at_level(logging.WARNING, logger="shoal.workflow"):
        get_workflow("fedavg")(ctx)
    run = tmp_path / "run"

    # The model is untouched by the metric: shift (1*100 + 3*300) / 400 = 2.5 a round.
    final = load_arrays(run / "models" / "global_final.safetensors")
    np.testing.assert_array_equal(final["w"], np.full((2, 3), 7.5, np.float32))

    lines = _lines(run)
    assert [x["round"] for x in lines] == [1, 2, 3]
    for line in lines:
        assert line["sites"] == {"site-1": {"loss": 0.5, "acc": 0.75}, "site-2": {"acc": 0.25}}
        # loss: site-1's alone; acc: 0.75 * 100/400 + 0.25 * 300/400 = 0.375.
        assert line["aggregated"] == {"loss": 0.5, "acc": 0.375}
        assert line["missing"] == []
    scalars = _scalars(run)
    assert scalars[("aggregated/loss", 3)] == 0.5
    assert ("sites/site-2/loss", 1) not in scalars
    dropped = [r.getMessage() for r in caplog.records if "dropped metric" in r.getMessage()]
    assert any("'loss' of site-2" in m and "1e+308" in m for m in dropped), dropped
    assert any("'big' of site-2" in m and "chars)" in m for m in dropped), dropped
    assert comm.reports[-1]["metrics"] == {"loss": 0.5, "acc": 0.375}


def test_1e15_examples_and_a_1e308_metric_beside_a_healthy_site(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The red-team's numbers: site-2 claims 10**15 examples and loss=1e308.
    Past the default bound, its result is refused: the global model is
    site-1's alone, not site-2's, and the job completes."""
    comm = _comm(
        tmp_path,
        {"site-1": shift(1.0, 100, loss=0.5), "site-2": shift(1000.0, 10**15, loss=1e308)},
    )
    ctx = _ctx(tmp_path, comm, spec=_spec(min_clients=1))
    with caplog.at_level(logging.WARNING, logger="shoal.workflow"):
        get_workflow("fedavg")(ctx)
    run = tmp_path / "run"

    # Unbounded, round 1 alone would give (1*100 + 1000*1e15) / (1e15 + 100) ~ 1000.
    # Refused, each round adds site-1's 1.0: 3.0 after 3 rounds.
    final = load_arrays(run / "models" / "global_final.safetensors")
    np.testing.assert_array_equal(final["w"], np.full((2, 3), 3.0, np.float32))
    for line in _lines(run):
        assert line["sites"] == {"site-1": {"loss": 0.5}}
        assert line["aggregated"] == {"loss": 0.5}
        assert line["num_examples"] == 100
        assert line["missing"] == ["site-2"]
    refused = [r.getMessage() for r in caplog.records if "refused the result" in r.getMessage()]
    assert len(refused) == 3
    assert "site-2: num_examples is 1000000000000000, over the job's " in refused[0]
    assert "workflow.max_num_examples=1000000000" in refused[0]


def test_over_the_bound_below_min_clients_fails_naming_the_bound(tmp_path: Path) -> None:
    comm = _comm(tmp_path, {"site-1": shift(1.0, 100), "site-2": shift(1000.0, 10**15)})
    with pytest.raises(JobFailedError) as info:
        get_workflow("fedavg")(_ctx(tmp_path, comm))
    assert "missing: site-2 (num_examples is 1000000000000000, over the job's " in str(info.value)
    assert "workflow.max_num_examples=1000000000)" in str(info.value)


def test_the_bound_is_inclusive_and_a_job_setting(tmp_path: Path) -> None:
    # Default bound: 10**9 is taken. Both sites at 10**9: (1 + 3) / 2 = 2.0 a round.
    comm = _comm(tmp_path, {"site-1": shift(1.0, 10**9), "site-2": shift(3.0, 10**9)})
    get_workflow("fedavg")(_ctx(tmp_path, comm, num_rounds=1))
    m = load_arrays(tmp_path / "run" / "models" / "global_final.safetensors")
    np.testing.assert_array_equal(m["w"], np.full((2, 3), 2.0, np.float32))
    assert _lines(tmp_path / "run")[0]["num_examples"] == 2 * 10**9

    # max_num_examples: 30: site-2 at 30 is taken, at 31 refused.
    # (1*10 + 5*30) / 40 = 4.0
    comm = _comm(tmp_path, {"site-1": shift(1.0, 10), "site-2": shift(5.0, 30)})
    get_workflow("fedavg")(_ctx(tmp_path, comm, run_dir="r2", num_rounds=1, max_num_examples=30))
    m = load_arrays(tmp_path / "r2" / "models" / "global_final.safetensors")
    np.testing.assert_array_equal(m["w"], np.full((2, 3), 4.0, np.float32))

    comm = _comm(tmp_path, {"site-1": shift(1.0, 10), "site-2": shift(5.0, 31)})
    with pytest.raises(JobFailedError, match=r"num_examples is 31, over .*max_num_examples=30"):
        get_workflow("fedavg")(
            _ctx(tmp_path, comm, run_dir="r3", num_rounds=1, max_num_examples=30)
        )


def _fill(v: np.ndarray, value: float) -> np.ndarray:
    return np.full_like(v, value) if v.dtype.kind == "f" else v


def test_float32_extremes_give_a_finite_model(tmp_path: Path) -> None:
    """Finite results near float32's largest value: the difference of a
    running mean (3e38 - -3e38) would overflow; the model stays finite."""

    def high(g: dict[str, np.ndarray], rnd: int) -> tuple[dict[str, np.ndarray], int, dict]:
        return {k: _fill(v, 3e38) for k, v in g.items()}, 10**9, {}

    def low(g: dict[str, np.ndarray], rnd: int) -> tuple[dict[str, np.ndarray], int, dict]:
        return {k: _fill(v, -3e38) for k, v in g.items()}, 10**9, {}

    comm = _comm(tmp_path, {"site-1": high, "site-2": low})
    get_workflow("fedavg")(_ctx(tmp_path, comm, num_rounds=1))
    m = load_arrays(tmp_path / "run" / "models" / "global_final.safetensors")
    # 3e38 * 0.5 + -3e38 * 0.5 = 0 (equal weights).
    np.testing.assert_array_equal(m["w"], np.zeros((2, 3), np.float32))
    np.testing.assert_array_equal(m["b"], np.zeros(3, np.float32))


def test_params_max_num_examples() -> None:
    assert parse_params("fedavg", {"num_rounds": 1}).max_num_examples == DEFAULT_MAX_NUM_EXAMPLES
    p = parse_params("fedavg", {"num_rounds": 1, "max_num_examples": 2**53})
    assert isinstance(p, FedAvgParams) and p.max_num_examples == 2**53
    for bad in (0, -1, 1.5, True, "many", 2**53 + 1, None):
        with pytest.raises(
            JobValidationError,
            match=r"job.yml: workflow.max_num_examples: must be an integer in \[1, 2\*\*53\], got",
        ):
            parse_params("fedavg", {"num_rounds": 1, "max_num_examples": bad})
