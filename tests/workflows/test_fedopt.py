"""The server optimizers (FedAvgM, FedAdam, FedYogi, FedAdagrad): each update
against numbers computed by hand from the equations for two rounds, then
each workflow through the round driver (with a resume) and its parameters.

The equations (Reddi et al. 2021, Algorithm 2; Hsu et al. 2019), with
``d = aggregate - old``:

    FedAvgM:    m = b*m + d;                      x = old + lr*m
    adaptive:   m = b1*m + (1-b1)*d;              x = old + lr*m / (sqrt(v) + tau)
    FedAdagrad: v = v + d**2
    FedAdam:    v = b2*v + (1-b2)*d**2
    FedYogi:    v = v - (1-b2)*d**2*sign(v - d**2)

``m`` starts at 0, ``v`` at tau**2; no bias correction.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shoal.arrays import load_arrays
from shoal.errors import JobValidationError
from shoal.workflows import UpdateResult, get_workflow, parse_params, workflow_names
from shoal.workflows.fedopt import AdaptiveParams, FedAvgMParams, adaptive, momentum
from shoal.workflows.store import RoundStore

from .fakes import shift
from .test_fedavg import _comm, _ctx, _sites


def _two_rounds(update: Any, d1: list[float], d2: list[float]) -> tuple[Any, Any]:
    """Round 1 from x0 = 0 with aggregate x0 + d1, round 2 with x1 + d2; an
    int64 array rides along (it takes the aggregate). Round 1's result is a
    copy: round 2 changes the state it is given in place."""
    old = {"w": np.zeros(len(d1)), "step": np.array(0)}
    r1 = update(old, {"w": np.array(d1, float), "step": np.array(3)}, {})
    r1 = UpdateResult(params=copy.deepcopy(r1.params), state=r1.state)
    kept = copy.deepcopy(r1.state)
    x1 = r1.params["w"]
    r2 = update({"w": x1, "step": np.array(3)}, {"w": x1 + d2, "step": np.array(6)}, r1.state)
    return UpdateResult(params=r1.params, state=kept), r2


def _check_ints_and_rounds(r1: Any, r2: Any) -> None:
    assert r1.params["step"].dtype == np.int64 and int(r1.params["step"]) == 3
    assert int(r2.params["step"]) == 6
    assert r1.state["rounds"] == 1 and r2.state["rounds"] == 2
    assert not any(k.endswith("/step") for k in r2.state)


def test_fedavgm_by_hand() -> None:
    # lr 0.5, beta 0.9. Round 1: d = 2.5: m = 2.5, x1 = 0.5 * 2.5 = 1.25.
    # Round 2: d = 2.5: m = 0.9 * 2.5 + 2.5 = 4.75, x2 = 1.25 + 0.5 * 4.75 = 3.625.
    r1, r2 = _two_rounds(momentum(0.5, 0.9), [2.5, -2.5], [2.5, -2.5])
    np.testing.assert_array_equal(r1.params["w"], [1.25, -1.25])
    np.testing.assert_array_equal(r1.state["m/w"], [2.5, -2.5])
    np.testing.assert_allclose(r2.state["m/w"], [4.75, -4.75], rtol=1e-15)
    np.testing.assert_allclose(r2.params["w"], [3.625, -3.625], rtol=1e-15)
    _check_ints_and_rounds(r1, r2)


def test_fedadam_by_hand() -> None:
    # lr 3, b1 0.5, b2 0.5, tau 1: v0 = 1.
    # Round 1, d = 7: m = 0.5 * 7 = 3.5; v = 0.5 * 1 + 0.5 * 49 = 25;
    #   x1 = 0 + 3 * 3.5 / (5 + 1) = 1.75.
    # Round 2, d = 5: m = 0.5 * 3.5 + 0.5 * 5 = 4.25; v = 0.5 * 25 + 0.5 * 25 = 25;
    #   x2 = 1.75 + 3 * 4.25 / 6 = 1.75 + 2.125 = 3.875.
    # The second element is the mirror image (d = -7, -5): v alike, m and x negated.
    update = adaptive("adam", lr=3, beta1=0.5, beta2=0.5, tau=1)
    r1, r2 = _two_rounds(update, [7, -7], [5, -5])
    np.testing.assert_array_equal(r1.state["m/w"], [3.5, -3.5])
    np.testing.assert_array_equal(r1.state["v/w"], [25, 25])
    np.testing.assert_array_equal(r1.params["w"], [1.75, -1.75])
    np.testing.assert_array_equal(r2.state["m/w"], [4.25, -4.25])
    np.testing.assert_array_equal(r2.state["v/w"], [25, 25])
    np.testing.assert_array_equal(r2.params["w"], [3.875, -3.875])
    _check_ints_and_rounds(r1, r2)


def test_fedadagrad_by_hand() -> None:
    # lr 3, b1 0.5, tau 3: v0 = 9 (b2 plays no part).
    # Round 1, d = 4: m = 2; v = 9 + 16 = 25; x1 = 3 * 2 / (5 + 3) = 0.75.
    # Round 2, d = 12: m = 0.5 * 2 + 0.5 * 12 = 7; v = 25 + 144 = 169;
    #   x2 = 0.75 + 3 * 7 / (13 + 3) = 0.75 + 1.3125 = 2.0625.
    update = adaptive("adagrad", lr=3, beta1=0.5, beta2=0.99, tau=3)
    r1, r2 = _two_rounds(update, [4], [12])
    np.testing.assert_array_equal(r1.state["v/w"], [25])
    np.testing.assert_array_equal(r1.params["w"], [0.75])
    np.testing.assert_array_equal(r2.state["m/w"], [7])
    np.testing.assert_array_equal(r2.state["v/w"], [169])
    np.testing.assert_array_equal(r2.params["w"], [2.0625])
    _check_ints_and_rounds(r1, r2)


def test_fedyogi_by_hand_both_signs() -> None:
    # lr 3, b1 0.5, b2 0.5, tau 1: v0 = 1.
    # Round 1, d = 4 in both elements: v0 - d**2 = -15 < 0, so
    #   v = 1 + 0.5 * 16 = 9; m = 2; x1 = 3 * 2 / (3 + 1) = 1.5.
    # Round 2, element 1, d = 12: 9 - 144 < 0: v = 9 + 0.5 * 144 = 81 (grows, as Adam's
    #   would not: 0.5*9 + 0.5*144 = 76.5); m = 1 + 6 = 7; x2 = 1.5 + 3 * 7 / (9 + 1) = 3.6.
    # Element 2, d = 8/3: 9 - 64/9 > 0: v = 9 - 0.5 * 64/9 = 49/9 (shrinks by at most
    #   (1-b2) d**2); m = 1 + 4/3 = 7/3; x2 = 1.5 + 3 * (7/3) / (7/3 + 1) = 1.5 + 2.1 = 3.6.
    update = adaptive("yogi", lr=3, beta1=0.5, beta2=0.5, tau=1)
    r1, r2 = _two_rounds(update, [4, 4], [12, 8 / 3])
    np.testing.assert_array_equal(r1.state["v/w"], [9, 9])
    np.testing.assert_array_equal(r1.params["w"], [1.5, 1.5])
    np.testing.assert_allclose(r2.state["v/w"], [81, 49 / 9], rtol=1e-14)
    np.testing.assert_allclose(r2.state["m/w"], [7, 7 / 3], rtol=1e-14)
    np.testing.assert_allclose(r2.params["w"], [3.6, 3.6], rtol=1e-14)
    _check_ints_and_rounds(r1, r2)


def test_yogi_leaves_v_alone_where_it_equals_d_squared() -> None:
    # sign(0) = 0: v0 = tau**2 = 4 = d**2, so v stays 4; m = 1; x1 = 1 * 1 / (2 + 2).
    update = adaptive("yogi", lr=1, beta1=0.5, beta2=0.5, tau=2)
    r1 = update({"w": np.zeros(1)}, {"w": np.array([2.0])}, {})
    np.testing.assert_array_equal(r1.state["v/w"], [4])
    np.testing.assert_array_equal(r1.params["w"], [0.25])


def test_updates_work_in_place_with_state_the_size_of_the_model() -> None:
    update = adaptive("adam", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    agg = {"w": np.ones((4, 5), np.float32)}
    r1 = update({"w": np.zeros((4, 5), np.float32)}, agg, {})
    assert r1.params["w"] is agg["w"]  # the aggregate's memory is the new model's
    agg2 = {"w": np.full((4, 5), 2, np.float32)}
    r2 = update({"w": r1.params["w"].copy()}, agg2, r1.state)
    # m and v are changed where they are, not copied each round.
    assert r2.state["m/w"] is r1.state["m/w"] and r2.state["v/w"] is r1.state["v/w"]
    assert {k: v.nbytes for k, v in r2.state.items() if isinstance(v, np.ndarray)} == {
        "m/w": 80,
        "v/w": 80,
    }
    # A state read back from disk (read-only) is copied once, then reused.
    frozen = {k: v for k, v in r2.state.items()}
    for v in frozen.values():
        if isinstance(v, np.ndarray):
            v.flags.writeable = False
    r3 = update({"w": r2.params["w"].copy()}, {"w": np.full((4, 5), 3, np.float32)}, frozen)
    assert r3.state["m/w"] is not frozen["m/w"] and r3.state["m/w"].flags.writeable


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_models_keep_their_dtype_and_a_float32_state(dtype: str) -> None:
    # Same numbers as the FedAdam test above: exact in 8 bits of mantissa too.
    dt = np.dtype(dtype) if dtype == "float16" else np.dtype(__import__("ml_dtypes").bfloat16)
    update = adaptive("adam", lr=3, beta1=0.5, beta2=0.5, tau=1)
    r1 = update({"w": np.zeros(2, dt)}, {"w": np.array([7, -7], dt)}, {})
    assert r1.params["w"].dtype == dt and r1.state["m/w"].dtype == np.float32
    np.testing.assert_array_equal(r1.params["w"].astype(np.float32), [1.75, -1.75])
    r2 = momentum(0.5, 0.9)({"w": np.zeros(2, dt)}, {"w": np.array([2.5, 1], dt)}, {})
    np.testing.assert_array_equal(r2.params["w"].astype(np.float32), [1.25, 0.5])
    assert r2.state["m/w"].dtype == np.float32


def test_a_large_array_goes_through_in_slabs_like_a_small_one() -> None:
    # 2.5 slabs of 2**20 elements: each slab's result is the elementwise formula.
    n = 5 * 2**19
    rng = np.random.default_rng(0)
    old = rng.normal(size=n).astype(np.float32)
    agg = old + rng.normal(size=n).astype(np.float32)
    d = (agg - old).astype(np.float64)
    got = adaptive("yogi", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)({"w": old}, {"w": agg}, {})
    v = 1e-6 - 0.01 * d**2 * np.sign(1e-6 - d**2)
    want = old + 0.1 * (0.1 * d) / (np.sqrt(v) + 1e-3)
    np.testing.assert_allclose(got.params["w"], want, rtol=2e-5, atol=1e-6)


# -- through the round driver --------------------------------------------------


def _run(tmp_path: Path, name: str, sites: dict[str, Any], run_dir: str, **params: Any) -> Path:
    get_workflow(name)(_ctx(tmp_path, _comm(tmp_path, sites), run_dir=run_dir, **params))
    return tmp_path / run_dir


def _model(run: Path, k: int) -> dict[str, np.ndarray]:
    return load_arrays(run / "models" / f"global_round_{k:04d}.safetensors", mmap=False)


@pytest.mark.parametrize(
    ("name", "params", "x1", "x2"),
    [
        # Sites shift by 1 (100 examples) and 3 (300): d = 2.5 every round.
        # lr 0.5, beta 0.9: test_fedavgm_by_hand's numbers.
        ("fedavgm", {"server_lr": 0.5, "server_momentum": 0.9}, 1.25, 3.625),
        # lr 3, b1 0.5, b2 0.5, tau 1.5: v0 = 2.25. Round 1: m = 1.25,
        # v = 1.125 + 0.5 * 6.25 = 4.25, x1 = 3 * 1.25 / (sqrt(4.25) + 1.5).
        # Round 2: m = 0.625 + 1.25 = 1.875, v = 2.125 + 3.125 = 5.25,
        # x2 = x1 + 3 * 1.875 / (sqrt(5.25) + 1.5).
        (
            "fedadam",
            {"server_lr": 3, "beta1": 0.5, "beta2": 0.5, "tau": 1.5},
            3.75 / (4.25**0.5 + 1.5),
            3.75 / (4.25**0.5 + 1.5) + 5.625 / (5.25**0.5 + 1.5),
        ),
        # tau 1.5: v0 = 2.25. Round 1: m = 1.25, v = 2.25 + 6.25 = 8.5.
        # Round 2: m = 1.875, v = 14.75.
        (
            "fedadagrad",
            {"server_lr": 3, "beta1": 0.5, "tau": 1.5},
            3.75 / (8.5**0.5 + 1.5),
            3.75 / (8.5**0.5 + 1.5) + 5.625 / (14.75**0.5 + 1.5),
        ),
        # b2 0.5, tau 1.5: v0 = 2.25 < 6.25 = d**2. Round 1: v = 2.25 + 3.125 = 5.375.
        # Round 2: 5.375 < 6.25 again: v = 5.375 + 3.125 = 8.5.
        (
            "fedyogi",
            {"server_lr": 3, "beta1": 0.5, "beta2": 0.5, "tau": 1.5},
            3.75 / (5.375**0.5 + 1.5),
            3.75 / (5.375**0.5 + 1.5) + 5.625 / (8.5**0.5 + 1.5),
        ),
    ],
)
def test_each_workflow_through_the_driver(
    tmp_path: Path, name: str, params: dict[str, Any], x1: float, x2: float
) -> None:
    sites = {"site-1": shift(1.0, 100), "site-2": shift(3.0, 300)}
    run = _run(tmp_path, name, sites, "run", num_rounds=2, **params)
    np.testing.assert_allclose(_model(run, 1)["w"], np.full((2, 3), x1), rtol=1e-6)
    np.testing.assert_allclose(_model(run, 2)["w"], np.full((2, 3), x2), rtol=1e-6)
    assert _model(run, 2)["w"].dtype == np.float32
    assert int(_model(run, 2)["step"]) == 6  # the heaviest site's 0 + 3 + 3
    store = RoundStore(run)
    ckpt = store.load_checkpoint()
    assert ckpt is not None and ckpt.state == "server_state/round_0002.safetensors"
    state = store.load_state(ckpt)
    assert state["rounds"] == 2
    want = {"m/b", "m/w", "rounds"} | ({"v/b", "v/w"} if name != "fedavgm" else set())
    assert set(state) == want


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path: Path, name: str) -> None:
    whole = _run(tmp_path, name, _sites(), "whole", num_rounds=4, server_lr=0.3)
    expected = load_arrays(whole / "models" / "global_final.safetensors")
    crashing = _comm(tmp_path, _sites(), crash_in_round=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        get_workflow(name)(_ctx(tmp_path, crashing, run_dir="resumed", num_rounds=4, server_lr=0.3))
    assert json.loads((tmp_path / "resumed" / "checkpoint.json").read_text())["round"] == 2
    resumed = _run(tmp_path, name, _sites(), "resumed", num_rounds=4, server_lr=0.3)
    got = load_arrays(resumed / "models" / "global_final.safetensors")
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])


def test_the_same_seed_samples_the_same_sites_in_every_workflow(tmp_path: Path) -> None:
    sites = {f"site-{i}": shift(float(i), 10 * i) for i in range(1, 7)}
    picked: dict[str, list[list[str]]] = {}
    for name in ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"):
        for run in ("a", "b"):
            comm = _comm(tmp_path, sites)
            ctx = _ctx(
                tmp_path, comm, run_dir=f"{name}-{run}", num_rounds=3, sample_fraction=0.5, seed=7
            )
            get_workflow(name)(ctx)
            choice = [s["sites"] for s in comm.scatters]
            assert all(len(c) == 3 for c in choice)
            assert picked.setdefault(name, choice) == choice  # same seed, same sites
    assert len({json.dumps(c) for c in picked.values()}) == 1  # and alike across workflows
    other = _comm(tmp_path, sites)
    ctx = _ctx(tmp_path, other, run_dir="seed8", num_rounds=3, sample_fraction=0.5, seed=8)
    get_workflow("fedadam")(ctx)
    assert [s["sites"] for s in other.scatters] != picked["fedadam"]


def test_params_defaults_and_refusals() -> None:
    assert {"fedavgm", "fedadam", "fedyogi", "fedadagrad"} <= set(workflow_names())
    assert parse_params("fedavgm", {"num_rounds": 2}) == FedAvgMParams(
        num_rounds=2, server_lr=0.1, server_momentum=0.9
    )
    for name in ("fedadam", "fedyogi", "fedadagrad"):
        p = parse_params(name, {"num_rounds": 2})
        assert p == AdaptiveParams(num_rounds=2, server_lr=0.01, beta1=0.9, beta2=0.99, tau=1e-3)
    with pytest.raises(JobValidationError, match=r"workflow.beta2: must be in \[0, 1\), got 1.0"):
        parse_params("fedadam", {"num_rounds": 2, "beta2": 1})
    with pytest.raises(JobValidationError, match=r"workflow.tau: must be in \(0, 1000\]"):
        parse_params("fedyogi", {"num_rounds": 2, "tau": 0})
    with pytest.raises(JobValidationError, match=r"workflow.server_lr: must be in \(0, "):
        parse_params("fedadagrad", {"num_rounds": 2, "server_lr": -1})
    with pytest.raises(JobValidationError, match=r"workflow.beta1: unknown fedavgm parameter"):
        parse_params("fedavgm", {"num_rounds": 2, "beta1": 0.5})
