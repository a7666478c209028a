"""Robust aggregates: elementwise median and trimmed mean, Krum and Multi-Krum.

These are *not* incremental: they need every contribution at once (memory of
N models, though each array is stacked one at a time). They ignore the
weights (``num_examples``): a site that claims more examples gains no say.
Integer and bool arrays take the elementwise lower median (always one of
the given values).

    agg = median([site_a, site_b, site_c])
    agg = trimmed_mean([site_a, site_b, site_c, site_d], trim_fraction=0.25)
    agg = krum([a, b, c, d, e], byzantine=1)          # the most central one
    agg = multi_krum([a, b, c, d, e], byzantine=1)    # mean of the n - f most central

Krum and Multi-Krum (Blanchard et al., NeurIPS 2017) score each
contribution by the sum of its squared distances (over every floating-point
weight) to its ``n - f - 2`` nearest others, for at most ``f`` Byzantine
sites among ``n >= 2f + 3``; Krum keeps the lowest score's contribution
whole, Multi-Krum averages the ``m`` lowest (``m = n - f`` by default).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from shoal.arrays import array_specs, check_compatible, is_floating
from shoal.errors import ArrayFormatError

__all__ = ["krum", "krum_scores", "median", "multi_krum", "trimmed_mean"]

# Elements per slab when distances are summed: n slabs of float64 at a time.
_SLAB = 1 << 16


def _check(contributions: Sequence[Mapping[str, np.ndarray]]) -> None:
    if not contributions:
        raise ArrayFormatError("nothing to aggregate: no contribution was given")
    ref = array_specs(contributions[0])
    for c in contributions[1:]:
        check_compatible(ref, c)


def _lower_median(stack: np.ndarray) -> np.ndarray:
    """The lower median along axis 0; ``stack`` (the caller's own) is reordered."""
    k = (stack.shape[0] - 1) // 2
    stack.partition(k, axis=0)
    return stack[k].copy()


def _float_median(stack: np.ndarray) -> np.ndarray:
    """The elementwise median along axis 0: the middle value, or the mean of
    the two middle ones taken as ``lo/2 + hi/2``. numpy's ``(lo + hi) / 2``
    overflows near the dtype's largest value (3e38 + 3e38 in float32), so
    two finite contributions gave an Inf median; halving first is exact
    (but for subnormals) and the sum of halves cannot overflow."""
    n = stack.shape[0]
    # In place: the stack is the caller's own, and a partitioned copy would
    # be one more array of n contributions.
    if n % 2:
        stack.partition(n // 2, axis=0)
        return stack[n // 2].copy()
    stack.partition([n // 2 - 1, n // 2], axis=0)
    half = stack.dtype.type(0.5)
    return stack[n // 2 - 1] * half + stack[n // 2] * half


def median(contributions: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Elementwise median of each array (mean of the two middle values when even)."""
    _check(contributions)
    out: dict[str, np.ndarray] = {}
    for name, first in contributions[0].items():
        stack = np.stack([c[name] for c in contributions])
        if is_floating(first.dtype):
            if first.dtype.itemsize < 4:
                # Half precision in float32: numpy sorts bfloat16 (an
                # ml_dtypes type) slowly, and the halves of float16's
                # smallest values would be rounded.
                stack = stack.astype(np.float32)
            out[name] = _float_median(stack).astype(first.dtype, copy=False)
        else:
            out[name] = _lower_median(stack)
    return out


def trimmed_mean(
    contributions: Sequence[Mapping[str, np.ndarray]], *, trim_fraction: float = 0.1
) -> dict[str, np.ndarray]:
    """Elementwise mean after dropping the ``floor(trim_fraction * n)`` lowest
    and highest values of each element (``0 <= trim_fraction < 0.5``)."""
    if not 0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction!r}")
    _check(contributions)
    n = len(contributions)
    k = math.floor(trim_fraction * n)
    out: dict[str, np.ndarray] = {}
    for name, first in contributions[0].items():
        stack = np.stack([c[name] for c in contributions])
        if is_floating(first.dtype):
            stack.sort(axis=0)  # in place: the stack is ours
            kept = stack[k : n - k]
            if kept.dtype.kind != "f":
                # bfloat16: numpy's mean(dtype=float64) adds in bfloat16.
                kept = kept.astype(np.float64)
            out[name] = kept.mean(axis=0, dtype=np.float64).astype(first.dtype)
        else:
            out[name] = _lower_median(stack)
    return out


def krum_scores(contributions: Sequence[Mapping[str, np.ndarray]], *, byzantine: int) -> np.ndarray:
    """Each contribution's Krum score: the sum of its squared distances to its
    ``n - byzantine - 2`` nearest others (distances over every floating
    array, in float64). ArrayFormatError unless ``n >= 2 * byzantine + 3``."""
    _check(contributions)
    n = len(contributions)
    if byzantine < 0 or n < 2 * byzantine + 3:
        raise ArrayFormatError(
            f"krum with krum_byzantine={byzantine} needs at least {2 * byzantine + 3} "
            f"results (2f + 3), got {n}"
        )
    dist = _squared_distances(contributions)
    # Each row's nearest others: its own 0 (the diagonal) sorted out first.
    nearest = np.sort(dist + np.diag(np.full(n, np.inf)), axis=1)[:, : n - byzantine - 2]
    scores: np.ndarray = nearest.sum(axis=1)
    return scores


def _squared_distances(contributions: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
    """The n x n matrix of squared Euclidean distances, summed slab by slab."""
    n = len(contributions)
    dist = np.zeros((n, n))
    with np.errstate(over="ignore"):  # an Inf distance still ranks last
        for name, first in contributions[0].items():
            if not is_floating(first.dtype):
                continue
            flat = [np.asarray(c[name]).reshape(-1) for c in contributions]
            for lo in range(0, flat[0].shape[0], _SLAB):
                x = np.stack([f[lo : lo + _SLAB] for f in flat]).astype(np.float64)
                for i in range(n - 1):
                    d = x[i + 1 :] - x[i]
                    row = np.einsum("ij,ij->i", d, d)
                    dist[i, i + 1 :] += row
                    dist[i + 1 :, i] += row
    return dist


def _ranked(contributions: Sequence[Mapping[str, np.ndarray]], byzantine: int) -> list[int]:
    # A stable sort: on a tie, the contribution added first.
    return [
        int(i) for i in np.argsort(krum_scores(contributions, byzantine=byzantine), kind="stable")
    ]


def krum(
    contributions: Sequence[Mapping[str, np.ndarray]], *, byzantine: int = 1
) -> dict[str, np.ndarray]:
    """The contribution with the lowest Krum score, whole (a copy)."""
    best = contributions[_ranked(contributions, byzantine)[0]]
    return {name: np.array(a, copy=True) for name, a in best.items()}


def multi_krum(
    contributions: Sequence[Mapping[str, np.ndarray]], *, byzantine: int = 1, m: int = 0
) -> dict[str, np.ndarray]:
    """The mean of the ``m`` contributions with the lowest Krum scores (``m``
    of 0: ``n - byzantine``; at most ``n``); integer and bool arrays take
    their lower median."""
    if m < 0:
        raise ValueError(f"multi_krum m must be >= 0, got {m!r}")
    ranked = _ranked(contributions, byzantine)
    keep = m or len(contributions) - byzantine
    chosen = [contributions[i] for i in ranked[: min(keep, len(contributions))]]
    out: dict[str, np.ndarray] = {}
    for name, first in chosen[0].items():
        stack = np.stack([c[name] for c in chosen])
        if is_floating(first.dtype):
            if stack.dtype.kind != "f":
                stack = stack.astype(np.float64)  # bfloat16: see trimmed_mean
            out[name] = stack.mean(axis=0, dtype=np.float64).astype(first.dtype)
        else:
            out[name] = _lower_median(stack)
    return out
