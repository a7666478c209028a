"""The round driver with other policies than FedAvg's: a server update with
state (FedAvgM, shoal.workflows.fedopt), a robust aggregator. Expected
values are computed by hand in the comments."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shoal.aggregation import aggregator_factory, weighted_mean
from shoal.arrays import load_arrays
from shoal.errors import JobFailedError, JobValidationError
from shoal.workflows import (
    Policies,
    RoundParams,
    ServerState,
    UpdateResult,
    get_workflow,
    parse_params,
    run_rounds,
)
from shoal.workflows.fedopt import FedAvgMParams
from shoal.workflows.store import RoundStore

from .fakes import shift
from .test_fedavg import _comm, _ctx, _sites


def _model(run: Path, k: int) -> dict[str, np.ndarray]:
    return load_arrays(run / "models" / f"global_round_{k:04d}.safetensors", mmap=False)


def test_fedavgm_through_the_driver_checkpoints_its_state(tmp_path: Path) -> None:
    # Sites shift by 1 (100 examples) and 3 (300): the aggregate is old + 2.5,
    # so the models are test_fedopt.py's test_fedavgm_by_hand numbers, in float32.
    comm = _comm(tmp_path, {"site-1": shift(1.0, 100), "site-2": shift(3.0, 300)})
    ctx = _ctx(tmp_path, comm, num_rounds=2, server_lr=0.5, server_momentum=0.9)
    get_workflow("fedavgm")(ctx)
    run = tmp_path / "run"
    np.testing.assert_array_equal(_model(run, 1)["w"], np.full((2, 3), 1.25, np.float32))
    np.testing.assert_allclose(_model(run, 2)["w"], np.full((2, 3), 3.625), rtol=1e-6)
    assert int(_model(run, 2)["step"]) == 6

    ckpt = json.loads((run / "checkpoint.json").read_text())
    assert ckpt["round"] == 2
    assert ckpt["state"] == "server_state/round_0002.safetensors"
    assert len(ckpt["state_xxh3_128"]) == 32
    store = RoundStore(run)
    loaded = store.load_checkpoint()
    assert loaded is not None
    state = store.load_state(loaded)
    assert sorted(state) == ["m/b", "m/w", "rounds"]
    assert state["rounds"] == 2
    np.testing.assert_allclose(state["m/w"], np.full((2, 3), 4.75), rtol=1e-6)
    assert state["m/w"].dtype == np.float32
    # What FedAvg writes stays as it was: no state, no state keys.
    fedavg = _comm(tmp_path, {"site-1": shift(1.0, 100), "site-2": shift(3.0, 300)})
    get_workflow("fedavg")(_ctx(tmp_path, fedavg, run_dir="plain", num_rounds=1))
    assert sorted(json.loads((tmp_path / "plain" / "checkpoint.json").read_text())) == [
        "model",
        "round",
        "xxh3_128",
    ]
    assert not (tmp_path / "plain" / "server_state").exists()


def _fedavgm(tmp_path: Path, comm: Any, run_dir: str, **params: Any) -> None:
    get_workflow("fedavgm")(
        _ctx(tmp_path, comm, run_dir=run_dir, server_lr=0.7, server_momentum=0.5, **params)
    )


def test_a_resumed_run_gets_its_state_back(tmp_path: Path) -> None:
    _fedavgm(tmp_path, _comm(tmp_path, _sites()), "whole", num_rounds=4)
    expected = load_arrays(tmp_path / "whole" / "models" / "global_final.safetensors")

    with pytest.raises(RuntimeError, match="simulated crash"):
        _fedavgm(tmp_path, _comm(tmp_path, _sites(), crash_in_round=3), "resumed", num_rounds=4)
    run = tmp_path / "resumed"
    assert json.loads((run / "checkpoint.json").read_text())["round"] == 2
    again = _comm(tmp_path, _sites())
    _fedavgm(tmp_path, again, "resumed", num_rounds=4)
    assert [s["round"] for s in again.scatters] == [3, 4]
    got = load_arrays(run / "models" / "global_final.safetensors")
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
    # Restarting from an empty state instead would have given another model.
    fresh = _comm(tmp_path, _sites())
    _fedavgm(tmp_path, fresh, "forgetful", num_rounds=2)
    (tmp_path / "forgetful" / "checkpoint.json").unlink()
    for p in (tmp_path / "forgetful" / "server_state").iterdir():
        p.unlink()
    _fedavgm(tmp_path, _comm(tmp_path, _sites()), "forgetful", num_rounds=4)
    wrong = load_arrays(tmp_path / "forgetful" / "models" / "global_final.safetensors")
    assert not np.array_equal(wrong["w"], expected["w"])


def test_a_corrupt_checkpoint_falls_back_to_a_model_and_its_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _fedavgm(tmp_path, _comm(tmp_path, _sites()), "whole", num_rounds=3)
    expected = load_arrays(tmp_path / "whole" / "models" / "global_final.safetensors")
    with pytest.raises(RuntimeError):
        _fedavgm(tmp_path, _comm(tmp_path, _sites(), crash_in_round=3), "run", num_rounds=3)
    run = tmp_path / "run"
    (run / "checkpoint.json").write_text("{not json")
    # Round 2's state is torn: the fallback takes round 1 with its state.
    (run / "server_state" / "round_0002.safetensors").write_bytes(b"\x10\0\0")
    again = _comm(tmp_path, _sites())
    with caplog.at_level(logging.WARNING):
        _fedavgm(tmp_path, again, "run", num_rounds=3)
    assert [s["round"] for s in again.scatters] == [2, 3]
    assert any("ignoring round 2" in r.message for r in caplog.records)
    got = load_arrays(run / "models" / "global_final.safetensors")
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])


def test_a_checkpoint_whose_state_does_not_match_is_not_trusted(tmp_path: Path) -> None:
    _fedavgm(tmp_path, _comm(tmp_path, _sites()), "run", num_rounds=2)
    store = RoundStore(tmp_path / "run")
    path = store.state_path(2)
    store.write_state(2, {"m/w": np.ones(1, np.float32), "rounds": 7})
    with pytest.raises(ValueError, match="does not match its checksum"):
        store._read_checkpoint()
    # The fallback takes what is on disk, readable (as for a model file).
    ckpt = RoundStore(store.run_dir).load_checkpoint()
    assert ckpt is not None and ckpt.state == "server_state/round_0002.safetensors"
    assert RoundStore(store.run_dir).load_state(ckpt)["rounds"] == 7
    assert path.exists()


def test_states_are_kept_for_the_rounds_models_are(tmp_path: Path) -> None:
    _fedavgm(tmp_path, _comm(tmp_path, _sites()), "run", num_rounds=4, keep_models=2)
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "server_state").iterdir()) == [
        "round_0003.safetensors",
        "round_0004.safetensors",
    ]
    assert sorted(p.name for p in (run / "models").iterdir()) == [
        "global_final.safetensors",
        "global_round_0000.safetensors",
        "global_round_0003.safetensors",
        "global_round_0004.safetensors",
    ]


def test_a_state_of_scalars_only_round_trips(tmp_path: Path) -> None:
    store = RoundStore(tmp_path / "run")
    model = store.write_model(1, {"w": np.zeros(2, np.float32)})
    state_path = store.write_state(1, {"lr": 0.25, "name": "x", "on": True, "none": None})
    assert state_path is not None
    ckpt = store.save_checkpoint(1, model, state_path)
    assert RoundStore(store.run_dir).load_state(ckpt) == {
        "lr": 0.25,
        "name": "x",
        "on": True,
        "none": None,
    }
    assert store.write_state(2, {}) is None and not store.state_path(2).exists()


def test_a_robust_aggregator_plugs_into_the_driver(tmp_path: Path) -> None:
    # Elementwise median of old+1, old+2, old+10 (weights ignored): +2 a round,
    # where the weighted mean would move (1*10 + 2*10 + 10*1000)/1020 ~ +9.8.
    comm = _comm(
        tmp_path,
        {"site-1": shift(1.0, 10), "site-2": shift(2.0, 10), "site-3": shift(10.0, 1000)},
    )
    ctx = _ctx(tmp_path, comm, num_rounds=2)
    policies = Policies(aggregator=aggregator_factory("median"))
    run_rounds(ctx, RoundParams(num_rounds=2), policies, workflow="median-avg")
    run = tmp_path / "run"
    np.testing.assert_array_equal(_model(run, 1)["w"], np.full((2, 3), 2.0, np.float32))
    np.testing.assert_array_equal(_model(run, 2)["b"], np.full(3, 4.0, np.float32))
    # Integer arrays: the lower median (0+1, 0+2, 0+10 -> 2 a round).
    assert int(_model(run, 2)["step"]) == 4


def _update_returning(params: Mapping[str, np.ndarray] | None, state: Any) -> Any:
    def update(
        old: Mapping[str, np.ndarray], aggregate: dict[str, np.ndarray], st: ServerState, /
    ) -> UpdateResult:
        return UpdateResult(params=dict(params or aggregate), state=state)

    return update


@pytest.mark.parametrize(
    ("params", "state", "error", "match"),
    [
        (
            {"w": np.full((2, 3), np.inf, np.float32), "b": np.zeros(3, np.float32)},
            {},
            JobFailedError,
            r"round 1: the server update's model is refused: .*",
        ),
        ({"w": np.zeros(1, np.float32)}, {}, JobFailedError, "server update's model is refused"),
        (None, [1], TypeError, "state must be a dict"),
        (None, {"x": [1, 2]}, TypeError, "server state 'x': must be a numpy array"),
        (None, {"x": float("nan")}, TypeError, "finite JSON scalar"),
    ],
)
def test_a_faulty_update_fails_the_job_before_anything_is_written(
    tmp_path: Path, params: Any, state: Any, error: type[Exception], match: str
) -> None:
    comm = _comm(tmp_path, {"site-1": shift(1.0, 1), "site-2": shift(1.0, 1)})
    policies = Policies(aggregator=weighted_mean, update=_update_returning(params, state))
    with pytest.raises(error, match=match):
        run_rounds(_ctx(tmp_path, comm), RoundParams(num_rounds=2), policies, workflow="t")
    assert not (tmp_path / "run" / "models" / "global_round_0001.safetensors").exists()
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["round"] == 0


def test_fedavgm_params_through_the_registry() -> None:
    p = parse_params("fedavgm", {"num_rounds": 2, "server_lr": 1, "keep_models": 0})
    assert p == FedAvgMParams(num_rounds=2, server_lr=1.0, server_momentum=0.9, keep_models=0)
    with pytest.raises(
        JobValidationError,
        match=r"^job.yml: workflow.server_momentum: must be in \[0, 1\), got 1.0$",
    ):
        parse_params("fedavgm", {"num_rounds": 2, "server_momentum": 1})
    with pytest.raises(
        JobValidationError,
        match=r"^job.yml: workflow.momentum: unknown fedavgm parameter \(known: "
        r"aggregator, evaluate_after, keep_models, krum_byzantine, max_num_examples, "
        r"multi_krum_m, num_rounds, round_timeout_s, sample_fraction, seed, server_lr, "
        r"server_momentum, trim_fraction\)$",
    ):
        parse_params("fedavgm", {"num_rounds": 2, "momentum": 0.5})
    with pytest.raises(JobValidationError, match="workflow.num_rounds: required integer"):
        parse_params("fedavgm", {})
