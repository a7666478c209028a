"""One factory for every aggregator a round driver takes: the streaming
weighted mean, and the robust ones, which keep copies of what they are given."""

from __future__ import annotations

import numpy as np
import pytest

from shoal.aggregation import (
    Buffered,
    WeightedMean,
    aggregator_factory,
    aggregator_names,
    median,
    weighted_mean,
)
from shoal.errors import ArrayFormatError


def _fold(name: str, values: list[float], weights: list[float], **options: float) -> np.ndarray:
    agg = aggregator_factory(name, **options)(None)
    for v, w in zip(values, weights, strict=True):
        agg.add({"x": np.array([v, -v], np.float32)}, weight=w)
    return agg.result()["x"]


def test_every_aggregator_by_name() -> None:
    assert aggregator_names() == ["krum", "median", "multi_krum", "trimmed_mean", "weighted_mean"]
    # (1*1 + 2*1 + 9*2) / 4 = 5.25; median of 1, 2, 9 = 2; trimming one of
    # five at each end leaves 2, 3, 4: mean 3.
    np.testing.assert_array_equal(_fold("weighted_mean", [1, 2, 9], [1, 1, 2]), [5.25, -5.25])
    np.testing.assert_array_equal(_fold("median", [1, 2, 9], [1, 1, 2]), [2, -2])
    np.testing.assert_array_equal(
        _fold("trimmed_mean", [1, 2, 3, 4, 100], [1] * 5, trim_fraction=0.2), [3, -3]
    )
    # Krum, f = 1 of n = 5, the 2 nearest: 1, 2, 3, 4, 100 score 1+4, 1+1, 1+1, 1+4, ...;
    # the lowest, 2 (tied with 3: the first added). Multi-Krum averages n - f = 4
    # of them: 2, 3, 1, 4 (5 and 5 tie: first added first) -> 2.5.
    np.testing.assert_array_equal(_fold("krum", [1, 2, 3, 4, 100], [1] * 5), [2, -2])
    np.testing.assert_array_equal(_fold("multi_krum", [1, 2, 3, 4, 100], [1] * 5), [2.5, -2.5])
    np.testing.assert_array_equal(
        _fold("multi_krum", [1, 2, 3, 4, 100], [1] * 5, byzantine=1, m=2), [2.5, -2.5]
    )


def test_the_weighted_mean_reuses_the_memory_it_is_offered() -> None:
    spare = {"x": np.zeros(2, np.float32)}
    agg = weighted_mean(spare)
    assert isinstance(agg, WeightedMean)
    agg.add({"x": np.ones(2, np.float32)}, weight=1)
    assert agg.result()["x"] is spare["x"]


def test_a_buffered_aggregator_keeps_copies() -> None:
    # A round reuses a result's file as soon as it is folded in.
    agg = Buffered(median)
    src = np.array([1.0, 2.0])
    agg.add({"x": src}, weight=1)
    src[:] = 100
    agg.add({"x": np.array([3.0, 4.0])}, weight=1)
    agg.add({"x": np.array([5.0, 6.0])}, weight=1)
    np.testing.assert_array_equal(agg.result()["x"], [3.0, 4.0])


def test_a_buffered_aggregator_refuses_what_does_not_match_and_what_is_not_finite() -> None:
    agg = aggregator_factory("median")(None)
    agg.add({"x": np.zeros(2)}, weight=1)
    with pytest.raises(ArrayFormatError, match="shape"):
        agg.add({"x": np.zeros(3)}, weight=1)
    with pytest.raises(ArrayFormatError, match="nothing to aggregate"):
        aggregator_factory("median")(None).result()
    # A combine that overflows anyway is refused rather than handed on.
    inf = Buffered(lambda results: {"x": results[0]["x"] * np.float32(1e30)})
    inf.add({"x": np.array([3e38], np.float32)}, weight=1)
    with np.errstate(over="ignore"), pytest.raises(ArrayFormatError, match="Inf"):
        inf.result()


def test_unknown_names_and_bad_options_are_refused_when_the_factory_is_made() -> None:
    with pytest.raises(ValueError, match=r"unknown aggregator 'mode' \(known: krum, median, "):
        aggregator_factory("mode")
    with pytest.raises(ValueError, match=r"trim_fraction must be in \[0, 0.5\), got 0.5"):
        aggregator_factory("trimmed_mean", trim_fraction=0.5)
    with pytest.raises(TypeError):
        aggregator_factory("median", trim_fraction=0.1)
    with pytest.raises(ValueError, match="byzantine must be an integer >= 0, got -1"):
        aggregator_factory("krum", byzantine=-1)
    with pytest.raises(ValueError, match="m must be an integer >= 0"):
        aggregator_factory("multi_krum", m=1.5)  # type: ignore[arg-type]


def test_krum_refuses_too_few_results_for_its_f() -> None:
    agg = aggregator_factory("krum", byzantine=1)(None)
    for v in range(4):
        agg.add({"x": np.full(2, float(v))}, weight=1)
    with pytest.raises(ArrayFormatError, match=r"krum_byzantine=1 needs at least 5 results"):
        agg.result()
