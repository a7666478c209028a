"""The built-in privacy filters: arithmetic by hand, noise scale, strict arguments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shoal.arrays import encode_arrays
from shoal.client.model import FLModel
from shoal.errors import ConfigError, JobValidationError
from shoal.filters import BUILTIN, FilterContext, build_chain, parse_filters
from shoal.filters.quantize import QUANTIZED_KEY
from shoal.privacy.accounting import gaussian_epsilon
from shoal.taskmeta import join_extras


def _ctx(
    point: str = "result_out", reference: dict[str, np.ndarray] | None = None
) -> FilterContext:
    return FilterContext(
        point=point, job_id="j", site="site-1", task="train", round=1, reference=reference
    )


def _run(name: str, model: FLModel, ctx: FilterContext, **args: object) -> FLModel:
    return BUILTIN[name](**args)(model, ctx)  # type: ignore[no-any-return]


def test_clip_scales_the_update_not_the_weights() -> None:
    received = {"w": np.array([1.0, 1.0], dtype=np.float32), "n": np.array([5], dtype=np.int64)}
    # Update (3, 4): norm 5, clipped to 1 -> (0.6, 0.8); ints are left alone.
    sent = FLModel(params={"w": np.array([4.0, 5.0], dtype=np.float32), "n": np.array([7])})
    out = _run("clip", sent, _ctx(reference=received), max_norm=1.0)
    assert out.params_type == "diff"
    np.testing.assert_allclose(out.params["w"], [0.6, 0.8], rtol=1e-6)
    assert out.params["w"].dtype == np.float32
    np.testing.assert_array_equal(out.params["n"], [2])
    # Within the bound: the update as it is.
    small = FLModel(params={"w": np.array([0.1, -0.2])}, params_type="diff")
    kept = _run("clip", small, _ctx(reference=None), max_norm=1.0)
    np.testing.assert_array_equal(kept.params["w"], [0.1, -0.2])


def test_clip_of_a_full_result_needs_the_received_model() -> None:
    with pytest.raises(ConfigError, match="runs at result_out or result_in"):
        _run("clip", FLModel(params={"w": np.ones(2)}), _ctx(reference=None), max_norm=1.0)


def test_gaussian_noise_has_the_stated_scale() -> None:
    # 200,000 noised zeros: the sample std s of n normal draws has standard
    # error sigma / sqrt(2(n-1)) ~ 0.0016 sigma; 6 standard errors (1e-9
    # two-sided) is 0.0095 sigma. Fixed seed: the test does not flake.
    sigma, n = 0.37, 200_000
    model = FLModel(params={"w": np.zeros(n, dtype=np.float64)}, params_type="diff")
    out = _run("gaussian", model, _ctx(), sigma=sigma, seed=7)
    s = float(np.std(out.params["w"], ddof=1))
    assert abs(s - sigma) < 6 * sigma / math.sqrt(2 * (n - 1))
    assert abs(float(np.mean(out.params["w"]))) < 6 * sigma / math.sqrt(n)
    # Unseeded filters draw different noise.
    a = _run("gaussian", model, _ctx(), sigma=sigma).params["w"]
    b = _run("gaussian", model, _ctx(), sigma=sigma).params["w"]
    assert not np.array_equal(a, b)


def test_local_dp_reports_the_accountants_epsilon() -> None:
    f = BUILTIN["gaussian"](sigma=2.0, seed=1, clip_norm=1.0, delta=1e-5)
    model = FLModel(params={"w": np.zeros(3)}, params_type="diff")
    eps = [f(model, _ctx()).metrics["local_dp_epsilon"] for _ in range(3)]
    want = [
        gaussian_epsilon(noise_multiplier=2.0, sampling_fraction=1, rounds=r, delta=1e-5)
        for r in (1, 2, 3)
    ]
    assert eps == want and eps[0] < eps[1] < eps[2]


def test_percentile_privacy_matches_flares_rule_by_hand() -> None:
    # |d| = 0.1 .. 1.0 (steps 2 -> 0.05 .. 0.5); the 50th percentile of the
    # per-step magnitudes (scalar included) is 0.275; smaller ones become 0,
    # the rest are truncated to gamma = 0.3 per step, times 2 steps.
    d = np.array([0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8, 0.9])
    model = FLModel(params={"w": d, "s": np.array(1.0)}, params_type="diff", meta={"num_steps": 2})
    out = _run("percentile_privacy", model, _ctx(), percentile=50, gamma=0.3)
    per_step = np.abs(np.concatenate([d / 2, [0.5]]))
    cutoff = np.percentile(per_step, 50)
    want = np.where(np.abs(d / 2) < cutoff, 0.0, np.clip(d / 2, -0.3, 0.3)) * 2
    np.testing.assert_allclose(out.params["w"], want)
    np.testing.assert_allclose(out.params["w"], [0, 0, 0, 0, 0, -0.6, 0.6, -0.6, 0.6])
    assert float(out.params["s"]) == 1.0  # scalars pass, as in FLARE


def test_exclude_vars_zeroes_the_named_updates() -> None:
    received = {"enc.w": np.ones(2), "enc.b": np.ones(1), "head.w": np.ones(2)}
    sent = FLModel(params={k: v + 1 for k, v in received.items()})
    out = _run("exclude_vars", sent, _ctx(reference=received), names=["enc.*"])
    assert not out.params["enc.w"].any() and not out.params["enc.b"].any()
    np.testing.assert_array_equal(out.params["head.w"], [1, 1])
    out = _run("exclude_vars", sent, _ctx(reference=received), regex=r"\.b$")
    assert not out.params["enc.b"].any() and out.params["enc.w"].all()


@pytest.mark.parametrize(("bits", "ratio"), [(16, 0.5), (8, 0.25)])
def test_quantize_shrinks_the_payload_and_dequantize_restores_the_dtype(
    bits: int, ratio: float
) -> None:
    rng = np.random.default_rng(0)
    received = {"w": rng.normal(size=(256, 256)).astype(np.float32), "step": np.array([3])}
    trained = {
        "w": received["w"] + rng.normal(0, 0.01, size=(256, 256)).astype(np.float32),
        "step": np.array([4]),
    }
    out = _run("quantize", FLModel(params=trained), _ctx(reference=received), bits=bits)
    before = encode_arrays(trained).size
    wire = encode_arrays(join_extras(out.params, out.extras))
    assert wire.size < before * ratio + 1024
    back = _run("dequantize", out, _ctx("result_in", reference=received))
    assert back.params["w"].dtype == np.float32 and not back.extras
    assert QUANTIZED_KEY not in back.meta and back.params_type == "diff"
    err = np.abs(back.params["w"] - (trained["w"] - received["w"])).max()
    span = float(np.ptp(trained["w"] - received["w"]))
    assert err <= (span / 255 / 2 + 1e-6 if bits == 8 else 1e-4)
    np.testing.assert_array_equal(back.params["step"], [1])


def test_float16_overflow_is_refused_not_sent_as_inf() -> None:
    received = {"w": np.zeros(2, dtype=np.float32)}
    with pytest.raises(ValueError, match="float16's range"):
        _run(
            "quantize",
            FLModel(params={"w": np.array([1e6, 0], dtype=np.float32)}),
            _ctx(reference=received),
            bits=16,
        )


def test_a_malformed_quantized_result_is_left_for_the_checks_to_refuse() -> None:
    received = {"w": np.zeros(2, dtype=np.float32)}
    bad = FLModel(
        params={"w": np.zeros(2, dtype=np.uint8)}, params_type="diff", meta={QUANTIZED_KEY: 8}
    )
    out = _run("dequantize", bad, _ctx("result_in", reference=received))
    assert out.params["w"].dtype == np.uint8


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"result_out": [{"filter": "clip"}]}, r"result_out\[0\]: clip: bad arguments"),
        (
            {"result_out": [{"filter": "clip", "args": {"max_norm": -1}}]},
            "max_norm must be a finite number > 0",
        ),
        (
            {"result_out": [{"filter": "clip", "args": {"max_norm": 1, "x": 2}}]},
            "unexpected keyword",
        ),
        (
            {"task_in": [{"filter": "clip", "args": {"max_norm": 1}}]},
            "clip runs at result_out, result_in, not at task_in",
        ),
        (
            {"result_out": [{"filter": "gaussian", "args": {"sigma": 1, "delta": 1e-5}}]},
            "clip_norm and delta go together",
        ),
        (
            {"result_out": [{"filter": "gaussian", "args": {"sigma": "x"}}]},
            "sigma must be a number",
        ),
        ({"result_out": [{"filter": "quantize", "args": {"bits": 4}}]}, "bits must be 8 or 16"),
        ({"result_in": [{"filter": "quantize", "args": {"bits": 8}}]}, "not at result_in"),
        ({"result_out": ["dequantize"]}, "dequantize runs at result_in"),
        (
            {"result_out": [{"filter": "percentile_privacy", "args": {"percentile": 101}}]},
            r"percentile must be in \[0, 100\]",
        ),
        ({"result_out": [{"filter": "exclude_vars", "args": {"regex": "("}}]}, "does not compile"),
        ({"result_out": [{"filter": "exclude_vars", "args": {}}]}, "exactly one of names"),
    ],
)
def test_bad_arguments_are_refused_when_the_job_is_read(raw: object, message: str) -> None:
    with pytest.raises(JobValidationError, match=message):
        parse_filters(raw, where="filters")


def test_a_chain_of_builtins_names_each_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    specs = parse_filters(
        {
            "result_out": [
                {"filter": "clip", "args": {"max_norm": 1}},
                {"filter": "gaussian", "args": {"sigma": 0.1, "seed": 1}},
            ]
        },
        where="filters",
    )["result_out"]
    chain = build_chain("result_out", specs, app_dir=None)
    caplog.set_level("INFO", logger="shoal")
    received = {"w": np.zeros(3)}
    chain.apply(
        FLModel(params={"w": np.full(3, 9.0)}),
        job_id="j",
        site="s",
        round=2,
        task="train",
        reference=received,
    )
    assert "result_out filters ran on s (round 2): job:clip, job:gaussian" in caplog.text


def test_at_the_server_a_malformed_result_is_left_for_the_checks_not_a_job_failure() -> None:
    received = {"w": np.zeros(3, dtype=np.float32)}
    bad = FLModel(params={"w": np.ones(5, dtype=np.float32), "extra": np.ones(2)})
    out = _run("clip", bad, _ctx("result_in", reference=received), max_norm=1.0)
    # Passed as it came: the driver's check refuses this one result, named.
    assert out.params["w"].shape == (5,)
    with pytest.raises(ConfigError, match="does not match the model the site received"):
        _run("clip", bad, _ctx("result_out", reference=received), max_norm=1.0)
