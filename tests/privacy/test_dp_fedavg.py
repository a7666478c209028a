"""Central DP-FedAvg: clipping, noise and adaptive clipping by hand from the
papers' rules; the accountant against dp-accounting called directly."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from shoal.errors import JobValidationError
from shoal.privacy.accounting import RDP_ORDERS, gaussian_epsilon
from shoal.workflows.dp_fedavg import CentralDP, parse_params
from shoal.workflows.policies import ServerState


def test_the_accountant_is_dp_accounting_and_monotone() -> None:
    for z, q in ((1.1, 0.1), (0.8, 1.0)):
        got = [
            gaussian_epsilon(noise_multiplier=z, sampling_fraction=q, rounds=r, delta=1e-5)
            for r in range(1, 6)
        ]
        for r, eps in enumerate(got, start=1):
            acc = rdp.RdpAccountant(orders=list(RDP_ORDERS))
            event = dp_accounting.GaussianDpEvent(z)
            if q < 1:
                event = dp_accounting.PoissonSampledDpEvent(q, event)
            acc.compose(event, r)
            assert eps == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)
        assert all(a < b for a, b in zip(got, got[1:], strict=False))
    assert gaussian_epsilon(noise_multiplier=1, sampling_fraction=1, rounds=0, delta=1e-5) == 0
    # More noise, less epsilon.
    assert gaussian_epsilon(
        noise_multiplier=2, sampling_fraction=1, rounds=3, delta=1e-5
    ) < gaussian_epsilon(noise_multiplier=1, sampling_fraction=1, rounds=3, delta=1e-5)


def _round(
    dp: CentralDP,
    old: dict[str, np.ndarray],
    results: list[dict[str, np.ndarray]],
    state: ServerState,
):  # type: ignore[no-untyped-def]
    agg = dp.aggregator()
    for i, r in enumerate(results):
        agg.add(dp.prepare(dict(r), old, state), weight=10 * (i + 1))  # weights ignored
    return dp.update(old, agg.result(), state)


def test_fixed_clipping_and_noise_by_hand() -> None:
    p = parse_params({"num_rounds": 1, "noise_multiplier": 0.5, "clip_norm": 1.0, "noise_seed": 11})
    dp = CentralDP(p, sampling_fraction=1.0)
    old = {"w": np.array([1.0, 2.0]), "n": np.array([4])}
    # Updates (3, 4) (norm 5 -> (0.6, 0.8)) and (0.3, 0.4) (norm 0.5, kept).
    results = [
        {"w": np.array([4.0, 6.0]), "n": np.array([5])},
        {"w": np.array([1.3, 2.4]), "n": np.array([5])},
    ]
    step = _round(dp, old, results, {})
    mean = old["w"] + (np.array([0.6, 0.8]) + np.array([0.3, 0.4])) / 2  # unweighted
    std = 0.5 * 1.0 / 2  # z * C / m
    noise = np.random.default_rng(11).normal(0.0, std, size=2)
    np.testing.assert_allclose(step.params["w"], mean + noise, rtol=1e-12)
    assert step.state["noise_std"] == std and step.state["clip_norm"] == 1.0
    assert step.state["epsilon"] == gaussian_epsilon(
        noise_multiplier=0.5, sampling_fraction=1, rounds=1, delta=1e-5
    )
    np.testing.assert_array_equal(step.params["n"], [5])


def test_adaptive_clipping_two_rounds_by_hand() -> None:
    z, sb, eta, gamma, c0 = 1.0, 1.0, 0.2, 0.5, 1.0
    p = parse_params(
        {
            "num_rounds": 2,
            "noise_multiplier": z,
            "clip_norm": c0,
            "adaptive_clipping": True,
            "clip_count_stddev": sb,
            "clip_learning_rate": eta,
            "target_quantile": gamma,
            "noise_seed": 5,
        }
    )
    dp = CentralDP(p, sampling_fraction=1.0)
    z_delta = (z**-2 - (2 * sb) ** -2) ** -0.5  # Andrew et al., Theorem 1
    rng = np.random.default_rng(5)
    old = {"w": np.zeros(2)}
    # Norms 0.5, 2 and 3: one of three under C = 1.
    results = [
        {"w": np.array([0.3, 0.4])},
        {"w": np.array([0.0, 2.0])},
        {"w": np.array([3.0, 0.0])},
    ]
    state: ServerState = {}
    c = c0
    for _ in range(2):
        updates = [r["w"] - old["w"] for r in results]
        clipped = [d * min(1.0, c / np.linalg.norm(d)) for d in updates]
        unclipped = sum(np.linalg.norm(d) <= c for d in updates)
        want = old["w"] + sum(clipped) / 3 + rng.normal(0.0, z_delta * c / 3, size=2)
        b = (unclipped + rng.normal(0.0, sb)) / 3
        c_next = c * math.exp(-eta * (b - gamma))
        step = _round(dp, old, results, state)
        np.testing.assert_allclose(step.params["w"], want, rtol=1e-12)
        assert step.state["clip_norm_used"] == pytest.approx(c)
        assert step.state["clip_norm"] == pytest.approx(c_next, rel=1e-12)
        old, state, c = step.params, step.state, c_next
    assert state["rounds"] == 2
    assert c != c0


def test_adaptive_clipping_needs_enough_count_noise() -> None:
    with pytest.raises(
        JobValidationError,
        match="clip_count_stddev: adaptive clipping needs it > noise_multiplier / 2 = 0.5",
    ):
        parse_params({"num_rounds": 1, "adaptive_clipping": True, "clip_count_stddev": 0.5})
    with pytest.raises(JobValidationError, match="workflow.noise_multiplier"):
        parse_params({"num_rounds": 1, "noise_multiplier": 0})


def test_the_budget_stops_before_the_round_that_would_pass_it() -> None:
    p = parse_params({"num_rounds": 10, "noise_multiplier": 1.0, "max_epsilon": 6.0})
    dp = CentralDP(p, sampling_fraction=1.0)
    eps = [dp.epsilon(k) for k in range(1, 11)]
    first_over = next(k for k, e in enumerate(eps, start=1) if e > 6.0)
    assert all(dp.stop_before(k, {}) is None for k in range(1, first_over))
    reason = dp.stop_before(first_over, {})
    assert reason is not None and "over max_epsilon=6" in reason
