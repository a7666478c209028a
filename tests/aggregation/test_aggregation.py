"""Aggregation with exact expectations (values chosen to be exact in binary)."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from shoal.aggregation import WeightedMean, krum, median, multi_krum, trimmed_mean
from shoal.aggregation.robust import krum_scores
from shoal.arrays import load_arrays, save_arrays
from shoal.errors import ArrayFormatError, ShoalError


def test_weighted_mean_exact() -> None:
    mean = WeightedMean()
    mean.add({"w": np.array([0.0, 8.0], np.float32), "step": np.array(1, np.int64)}, weight=1)
    mean.add({"w": np.array([4.0, 0.0], np.float32), "step": np.array(7, np.int64)}, weight=3)
    assert mean.count == 2
    assert mean.total_weight == 4
    out = mean.result()
    assert out["w"].dtype == np.float32
    np.testing.assert_array_equal(out["w"], np.array([3.0, 2.0], np.float32))
    # Integers: the highest-weight contribution wins.
    assert int(out["step"]) == 7


def test_weighted_mean_three_sites_matches_formula() -> None:
    rng = np.random.default_rng(1)
    sites = [{"a": rng.normal(size=(5, 7)), "b": rng.normal(size=3)} for _ in range(3)]
    weights = [600, 200, 200]
    mean = WeightedMean()
    for s, w in zip(sites, weights, strict=True):
        mean.add(s, weight=w)
    out = mean.result()
    for name in ("a", "b"):
        expected = sum(s[name] * w for s, w in zip(sites, weights, strict=True)) / sum(weights)
        np.testing.assert_allclose(out[name], expected, rtol=1e-12)


def test_integer_tie_keeps_first_and_bool() -> None:
    mean = WeightedMean()
    mean.add({"m": np.array([True, False])}, weight=2)
    mean.add({"m": np.array([False, False])}, weight=2)
    np.testing.assert_array_equal(mean.result()["m"], [True, False])


def test_float16_large_weights_do_not_overflow() -> None:
    mean = WeightedMean()
    mean.add({"h": np.array([1000.0], np.float16)}, weight=60000)
    mean.add({"h": np.array([3000.0], np.float16)}, weight=60000)
    out = mean.result()["h"]
    assert out.dtype == np.float16
    assert float(out[0]) == 2000.0


def test_weighted_mean_across_slabs_sizes_and_dtypes() -> None:
    """Layers of several slabs, and small layers after big ones and of
    another dtype, share the difference buffers correctly."""
    rng = np.random.default_rng(1)
    shapes = {"big": ((1 << 20) * 2 + 7,), "small": (5,), "half": (3, 1000), "big2": (1 << 20,)}
    dtypes = {"big": np.float32, "small": np.float32, "half": np.float16, "big2": np.float64}
    sites = [
        {k: rng.standard_normal(shape).astype(dtypes[k]) for k, shape in shapes.items()}
        for _ in range(3)
    ]
    weights = [1.0, 2.0, 5.0]
    mean = WeightedMean()
    for arrays, w in zip(sites, weights, strict=True):
        mean.add(arrays, weight=w)
    got = mean.result()
    for k in shapes:
        want = sum(w * s[k].astype(np.float64) for s, w in zip(sites, weights, strict=True)) / sum(
            weights
        )
        assert got[k].dtype == dtypes[k]
        tol = 1e-2 if dtypes[k] == np.float16 else 1e-5
        np.testing.assert_allclose(got[k].astype(np.float64), want, rtol=tol, atol=tol)


def test_single_contribution_is_a_copy(tmp_path: Path) -> None:
    path = save_arrays(tmp_path / "m", {"w": np.arange(4, dtype=np.float32)})
    mm = load_arrays(path)
    mean = WeightedMean()
    mean.add(mm, weight=5)
    out = mean.result()
    assert out["w"].flags.writeable
    np.testing.assert_array_equal(out["w"], np.arange(4))


def test_memory_mapped_inputs(tmp_path: Path) -> None:
    a = load_arrays(save_arrays(tmp_path / "a", {"w": np.full((3, 3), 2.0, np.float32)}))
    b = load_arrays(save_arrays(tmp_path / "b", {"w": np.full((3, 3), 6.0, np.float32)}))
    mean = WeightedMean()
    mean.add(a, weight=1)
    mean.add(b, weight=1)
    np.testing.assert_array_equal(mean.result()["w"], np.full((3, 3), 4.0, np.float32))


def test_refusals() -> None:
    mean = WeightedMean()
    with pytest.raises(ArrayFormatError, match="nothing to aggregate"):
        mean.result()
    with pytest.raises(ValueError, match="weight"):
        mean.add({"w": np.ones(2)}, weight=0)
    mean.add({"w": np.ones(2)}, weight=1)
    with pytest.raises(ArrayFormatError, match="'w': shape"):
        mean.add({"w": np.ones(3)}, weight=1)
    with pytest.raises(ArrayFormatError, match="'w': dtype"):
        mean.add({"w": np.ones(2, np.float32)}, weight=1)
    assert mean.count == 1
    mean.result()
    with pytest.raises(ShoalError, match="after result"):
        mean.add({"w": np.ones(2)}, weight=1)


def test_median_exact() -> None:
    cs = [
        {"f": np.array([1.0, 10.0], np.float32), "i": np.array([5, 1])},
        {"f": np.array([2.0, 20.0], np.float32), "i": np.array([3, 2])},
        {"f": np.array([100.0, -5.0], np.float32), "i": np.array([4, 9])},
    ]
    out = median(cs)
    np.testing.assert_array_equal(out["f"], np.array([2.0, 10.0], np.float32))
    assert out["f"].dtype == np.float32
    np.testing.assert_array_equal(out["i"], [4, 2])
    even = median(cs[:2])
    np.testing.assert_array_equal(even["f"], np.array([1.5, 15.0], np.float32))
    np.testing.assert_array_equal(even["i"], [3, 1])  # lower median


def test_trimmed_mean_exact() -> None:
    cs = [{"f": np.array([v])} for v in (1.0, 2.0, 3.0, 4.0, 1000.0)]
    np.testing.assert_array_equal(trimmed_mean(cs, trim_fraction=0.2)["f"], [3.0])
    np.testing.assert_array_equal(trimmed_mean(cs, trim_fraction=0.0)["f"], [202.0])
    with pytest.raises(ValueError, match="trim_fraction"):
        trimmed_mean(cs, trim_fraction=0.5)
    with pytest.raises(ArrayFormatError, match="nothing"):
        trimmed_mean([])
    with pytest.raises(ArrayFormatError, match="missing"):
        median([{"a": np.ones(1)}, {"b": np.ones(1)}])


def test_weighted_mean_of_opposite_extremes_is_finite() -> None:
    """``m += (x - m) * f`` overflows on ``3e38 - -3e38`` (float32) and
    ``1e308 - -1e308`` (float64); the convex update does not."""
    for dtype, big in (
        (np.float32, 3e38),
        (np.float64, 1e308),
        (np.float16, 60000.0),
        (ml_dtypes.bfloat16, 3e38),
    ):
        mean = WeightedMean()
        mean.add({"w": np.array([big, -big], dtype)}, weight=1)
        mean.add({"w": np.array([-big, big], dtype)}, weight=1)
        out = mean.result()["w"]
        assert out.dtype == dtype
        # big * 0.5 + -big * 0.5 = 0
        np.testing.assert_array_equal(out, np.zeros(2, dtype))


def test_weighted_mean_at_the_edge_of_the_range_stays_finite() -> None:
    # f = 2/3 and 1 - f are rounded in float32, and yet M * keep + M * f is M.
    largest = np.finfo(np.float32).max
    mean = WeightedMean()
    mean.add({"w": np.full(4, largest, np.float32)}, weight=1)
    mean.add({"w": np.full(4, largest, np.float32)}, weight=2)
    out = mean.result()["w"]
    # The mean of M and M is M.
    np.testing.assert_array_equal(out, np.full(4, largest, np.float32))


def test_weighted_mean_of_infinities_is_refused_not_nan() -> None:
    # WeightedMean's callers check that contributions are finite; if one
    # does not, inf + -inf gives NaN, which result() refuses.
    mean = WeightedMean()
    mean.add({"w": np.array([np.inf], np.float32)}, weight=1)
    mean.add({"w": np.array([-np.inf], np.float32)}, weight=1)
    with pytest.raises(ArrayFormatError, match="w: the weighted mean is not finite"):
        mean.result()


def test_weight_beyond_float_range_is_a_value_error() -> None:
    mean = WeightedMean()
    with pytest.raises(ValueError, match="weight must be a finite number > 0"):
        mean.add({"w": np.zeros(2, np.float32)}, weight=10**400)
    assert mean.count == 0


HALF = [np.float16, ml_dtypes.bfloat16]


@pytest.mark.parametrize("dtype", HALF, ids=["float16", "bfloat16"])
def test_half_precision_is_averaged_in_float32_and_rounded_once(dtype: type) -> None:
    """Blended in its own 8 or 11 bits, each site's contribution is rounded
    again: for 8 sites only about a third of the elements came out correctly
    rounded. Accumulated in float32 and rounded back once, the mean is the
    exact weighted mean rounded to ``dtype``, but for the rare element where
    float32's own rounding tips a tie."""
    rng = np.random.default_rng(7)
    sites = [rng.normal(size=20_000).astype(dtype) for _ in range(8)]
    weights = [int(w) for w in rng.integers(100, 6000, size=8)]
    mean = WeightedMean()
    for x, w in zip(sites, weights, strict=True):
        mean.add({"w": x, "step": np.array(w, np.int64)}, weight=w)
    out = mean.result()
    assert out["w"].dtype == np.dtype(dtype)
    exact = sum(x.astype(np.float64) * w for x, w in zip(sites, weights, strict=True))
    exact = (exact / sum(weights)).astype(dtype)
    assert np.mean(out["w"] == exact) > 0.999
    assert int(out["step"]) == max(weights)


def test_bfloat16_exact_values_and_memory_mapped_input(tmp_path: Path) -> None:
    bf16 = ml_dtypes.bfloat16
    a = load_arrays(save_arrays(tmp_path / "a", {"w": np.array([0.0, 8.0, -2.0], bf16)}))
    b = load_arrays(save_arrays(tmp_path / "b", {"w": np.array([4.0, 0.0, -2.0], bf16)}))
    mean = WeightedMean()
    mean.add(a, weight=1)
    mean.add(b, weight=3)
    out = mean.result()["w"]
    assert out.dtype == np.dtype(bf16) and out.flags.writeable
    np.testing.assert_array_equal(out.astype(np.float32), [3.0, 2.0, -2.0])
    # One contribution comes back bit for bit (-0.0 included).
    only = WeightedMean()
    one = np.array([-0.0, 1.5, 3e38], bf16)
    only.add({"w": one}, weight=2)
    assert only.result()["w"].tobytes() == one.tobytes()


def test_bfloat16_mismatch_is_refused() -> None:
    mean = WeightedMean()
    mean.add({"w": np.ones(2, ml_dtypes.bfloat16)}, weight=1)
    with pytest.raises(
        ArrayFormatError, match="'w': dtype float16 differs from the model's bfloat16"
    ):
        mean.add({"w": np.ones(2, np.float16)}, weight=1)


@pytest.mark.parametrize("dtype", HALF, ids=["float16", "bfloat16"])
def test_robust_aggregates_of_half_precision(dtype: type) -> None:
    big = float(ml_dtypes.finfo(dtype).max)
    sites = [{"w": np.array([1.0, big, -4.0], dtype)} for _ in range(3)]
    sites[1]["w"][0] = 2.0
    sites[2]["w"][0] = 100.0
    # Even count: the mean of the two middle values, big + big, must not overflow.
    med = median(sites[:2])["w"]
    assert med.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(med.astype(np.float64), [1.5, big, -4.0])
    trimmed = trimmed_mean(sites, trim_fraction=0.34)["w"]
    assert trimmed.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(trimmed.astype(np.float64), [2.0, big, -4.0])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_median_of_the_largest_values_does_not_overflow(dtype: type) -> None:
    """numpy's median is (lo + hi) / 2: Inf for two finite float32 3e38s."""
    big = np.finfo(dtype).max
    cs = [{"w": np.array([big, -big, big], dtype)}, {"w": np.array([big, big, -big], dtype)}]
    out = median(cs)["w"]
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, np.array([big, 0, 0], dtype))
    # And an odd count takes the middle value itself.
    np.testing.assert_array_equal(
        median([*cs, {"w": np.full(3, -big, dtype)}])["w"], [big, -big, -big]
    )


def test_median_of_bfloat16() -> None:
    bf = ml_dtypes.bfloat16
    big = float(ml_dtypes.finfo(bf).max)
    cs = [{"w": np.array([big, 1.0], bf)}, {"w": np.array([big, 2.0], bf)}]
    out = median(cs)["w"]
    assert out.dtype == bf
    np.testing.assert_array_equal(out.astype(np.float32), [big, 1.5])


def _krum_set() -> list[dict[str, np.ndarray]]:
    # Five sites, f = 1: one far off. "w" and "b" both count in the distances;
    # "step" (int) does not.
    w = [0.0, 1.0, 2.0, 4.0, 100.0]
    b = [0.0, 0.0, 0.0, 0.0, -50.0]
    return [
        {"w": np.array([wi]), "b": np.array([bi, bi]), "step": np.array(i)}
        for i, (wi, bi) in enumerate(zip(w, b, strict=True))
    ]


def test_krum_scores_by_hand() -> None:
    # n = 5, f = 1: each sums its n - f - 2 = 2 nearest squared distances.
    #   0: to 1, 2, 4 -> 1, 4, 16: 1 + 4 = 5
    #   1: to 0, 2, 4 -> 1, 1, 9:  1 + 1 = 2
    #   2: to 0, 1, 4 -> 4, 1, 4:  1 + 4 = 5
    #   4: to 0, 1, 2 -> 16, 9, 4: 4 + 9 = 13
    #   100 (b = -50, -50: +2500 + 2500 to every other):
    #      96**2 + 5000 = 14216, 98**2 + 5000 = 14604 -> 28820
    scores = krum_scores(_krum_set(), byzantine=1)
    np.testing.assert_array_equal(scores, [5, 2, 5, 13, 28820])
    # f = 0: the 3 nearest. 0: 1+4+16 = 21; 1: 1+1+9 = 11; 2: 4+1+4 = 9;
    # 4: 16+9+4 = 29; 100: 14216 + 14604 + (99**2 + 5000 = 14801) = 43621.
    np.testing.assert_array_equal(krum_scores(_krum_set(), byzantine=0), [21, 11, 9, 29, 43621])


def test_krum_and_multi_krum_by_hand() -> None:
    cs = _krum_set()
    out = krum(cs, byzantine=1)  # the lowest score, 2: contribution 1, whole
    np.testing.assert_array_equal(out["w"], [1.0])
    np.testing.assert_array_equal(out["b"], [0.0, 0.0])
    assert int(out["step"]) == 1
    assert out["w"] is not cs[1]["w"]  # a copy
    # m = n - f = 4: scores 2, 5, 5, 13 -> w 1, 0, 2, 4: mean 1.75; steps 1, 0, 2, 3:
    # lower median 1.
    multi = multi_krum(cs, byzantine=1)
    np.testing.assert_array_equal(multi["w"], [1.75])
    np.testing.assert_array_equal(multi["b"], [0.0, 0.0])
    assert int(multi["step"]) == 1
    # m = 3: w 1, 0, 2 -> 1.0; m = 5 (every one): the plain mean, 21.4.
    np.testing.assert_array_equal(multi_krum(cs, byzantine=1, m=3)["w"], [1.0])
    np.testing.assert_allclose(multi_krum(cs, byzantine=1, m=5)["w"], [21.4], rtol=1e-15)
    # m past n is n.
    np.testing.assert_allclose(multi_krum(cs, byzantine=1, m=50)["w"], [21.4], rtol=1e-15)
    assert multi["w"].dtype == np.float64


def test_krum_distances_span_slabs_and_keep_the_dtype() -> None:
    # 2**17 + 3 elements: three slabs of 2**16. Sites at 0, 0.001, 0.003, 0.006
    # and 1 everywhere; per element, site 1's two nearest are 1e-6 + 4e-6 away,
    # site 0's 1e-6 + 9e-6, site 2's 4e-6 + 9e-6, site 3's 9e-6 + 25e-6.
    n = 2**17 + 3
    cs = [{"w": np.full(n, v, np.float32)} for v in (0.0, 0.001, 0.003, 0.006, 1.0)]
    scores = krum_scores(cs, byzantine=1)
    np.testing.assert_allclose(scores[:4], np.array([10, 5, 13, 34]) * 1e-6 * n, rtol=1e-4)
    assert scores[4] > 1000 * scores[0]
    out = krum(cs, byzantine=1)["w"]
    assert out.dtype == np.float32 and float(out[0]) == np.float32(0.001)
