"""Robust aggregates: elementwise median and trimmed mean.

These are *not* incremental: they need every contribution at once (memory of
N models, though each array is stacked one at a time). Integer and bool
arrays take the elementwise lower median (always one of the given values).

    agg = median([site_a, site_b, site_c])
    agg = trimmed_mean([site_a, site_b, site_c, site_d], trim_fraction=0.25)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from shoal.arrays import array_specs, check_compatible, is_floating
from shoal.errors import ArrayFormatError

__all__ = ["median", "trimmed_mean"]


def _check(contributions: Sequence[Mapping[str, np.ndarray]]) -> None:
    if not contributions:
        raise ArrayFormatError("nothing to aggregate: no contribution was given")
    ref = array_specs(contributions[0])
    for c in contributions[1:]:
        check_compatible(ref, c)


def _lower_median(stack: np.ndarray) -> np.ndarray:
    return np.sort(stack, axis=0)[(stack.shape[0] - 1) // 2]


def median(contributions: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Elementwise median of each array (mean of the two middle values when even)."""
    _check(contributions)
    out: dict[str, np.ndarray] = {}
    for name, first in contributions[0].items():
        stack = np.stack([c[name] for c in contributions])
        if is_floating(first.dtype):
            if first.dtype.itemsize < 4:
                # Half precision in float64: the mean of the two middle values
                # overflows in float16 (60000 + 60000), and for bfloat16's
                # largest ones in float32 too.
                stack = stack.astype(np.float64)
            out[name] = np.median(stack, axis=0).astype(first.dtype, copy=False)
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
            kept = np.sort(stack, axis=0)[k : n - k]
            if kept.dtype.kind != "f":
                # bfloat16: numpy's mean(dtype=float64) adds in bfloat16.
                kept = kept.astype(np.float64)
            out[name] = kept.mean(axis=0, dtype=np.float64).astype(first.dtype)
        else:
            out[name] = _lower_median(stack)
    return out
