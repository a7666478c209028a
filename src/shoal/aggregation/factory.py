"""Aggregators a round driver folds results into, and the factories that make them.

A round asks its factory for a fresh :class:`Aggregator`, adds each valid
result as it arrives, and takes the aggregate once the gather is over::

    make = aggregator_factory("trimmed_mean", trim_fraction=0.2)
    agg = make(None)                     # or make(memory the round may reuse)
    for arrays, n in results:
        agg.add(arrays, weight=n)
    params = agg.result()

``weighted_mean`` streams (memory of one model); ``median``,
``trimmed_mean``, ``krum`` and ``multi_krum`` need every contribution at
once, so they copy each one as it is added: a result's arrays are
memory-mapped from a file the round reuses as soon as the result is folded
in. They ignore the weights.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from shoal.aggregation.robust import krum, median, multi_krum, trimmed_mean
from shoal.aggregation.weighted import WeightedMean
from shoal.arrays import array_specs, check_compatible, check_finite
from shoal.errors import ArrayFormatError, ShoalError

__all__ = [
    "Aggregator",
    "AggregatorFactory",
    "Buffered",
    "aggregator_factory",
    "aggregator_names",
    "weighted_mean",
]


class Aggregator(Protocol):
    """One round's aggregate, built one contribution at a time."""

    def add(self, arrays: Mapping[str, np.ndarray], weight: float) -> None:
        """Fold ``arrays`` in; ArrayFormatError (nothing changed) if they do
        not match the earlier contributions. ``arrays`` may be reused once
        this returns: keep a copy, not them."""

    def result(self) -> dict[str, np.ndarray]:
        """The aggregate, once every contribution is in; finite when they
        were (ArrayFormatError otherwise)."""


#: Makes a round's aggregator. Its argument: arrays nothing else refers to
#: any more (the previous global model), whose memory it may reuse, or None.
AggregatorFactory = Callable[[Mapping[str, np.ndarray] | None], Aggregator]


def weighted_mean(reuse: Mapping[str, np.ndarray] | None = None) -> Aggregator:
    """The streaming mean weighted by ``num_examples`` (FedAvg's)."""
    return WeightedMean(reuse=reuse)


class Buffered:
    """An aggregator over every contribution at once: copies each one, then
    hands the list to ``combine`` (e.g. ``median``)."""

    def __init__(self, combine: Callable[[Sequence[Mapping[str, np.ndarray]]], Any]) -> None:
        self._combine = combine
        self._kept: list[dict[str, np.ndarray]] = []
        self._done = False

    def add(self, arrays: Mapping[str, np.ndarray], weight: float) -> None:
        if self._done:
            raise ShoalError("Buffered.add() after result()")
        if self._kept:
            check_compatible(array_specs(self._kept[0]), arrays)
        self._kept.append({name: np.array(a, copy=True) for name, a in arrays.items()})

    def result(self) -> dict[str, np.ndarray]:
        if not self._kept:
            raise ArrayFormatError("nothing to aggregate: no contribution was added")
        self._done = True
        kept, self._kept = self._kept, []
        out: dict[str, np.ndarray] = self._combine(kept)
        check_finite(out)
        return out


def _buffered(combine: Callable[..., Any], **options: Any) -> AggregatorFactory:
    fn = functools.partial(combine, **options) if options else combine

    def make(reuse: Mapping[str, np.ndarray] | None = None) -> Aggregator:
        return Buffered(fn)

    return make


def _trimmed(trim_fraction: float = 0.1) -> AggregatorFactory:
    # Checked now, not once a round's results are in.
    if not 0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction!r}")
    return _buffered(trimmed_mean, trim_fraction=trim_fraction)


def _krum(byzantine: int = 1) -> AggregatorFactory:
    if isinstance(byzantine, bool) or not isinstance(byzantine, int) or byzantine < 0:
        raise ValueError(f"byzantine must be an integer >= 0, got {byzantine!r}")
    return _buffered(krum, byzantine=byzantine)


def _multi_krum(byzantine: int = 1, m: int = 0) -> AggregatorFactory:
    _krum(byzantine)
    if isinstance(m, bool) or not isinstance(m, int) or m < 0:
        raise ValueError(f"m must be an integer >= 0 (0: n - byzantine), got {m!r}")
    return _buffered(multi_krum, byzantine=byzantine, m=m)


_FACTORIES: dict[str, Callable[..., AggregatorFactory]] = {
    "weighted_mean": lambda: weighted_mean,
    "median": lambda: _buffered(median),
    "trimmed_mean": _trimmed,
    "krum": _krum,
    "multi_krum": _multi_krum,
}


def aggregator_names() -> list[str]:
    """The names :func:`aggregator_factory` knows, sorted."""
    return sorted(_FACTORIES)


def aggregator_factory(name: str, **options: Any) -> AggregatorFactory:
    """The factory called ``name`` with its ``options`` (``trimmed_mean``:
    ``trim_fraction``; ``krum``: ``byzantine``; ``multi_krum``: ``byzantine``,
    ``m``); ValueError naming the known ones."""
    try:
        make = _FACTORIES[name]
    except KeyError:
        raise ValueError(
            f"unknown aggregator {name!r} (known: {', '.join(aggregator_names())})"
        ) from None
    return make(**options)
