"""A round's metrics as JSON and TensorBoard can hold them: finite, within float32.

A metric that is not a finite number within float32's range (what
TensorBoard stores) is dropped with a warning naming the site and the
metric, never the job: every number written as JSON or to TensorBoard is
finite.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shoal.workflows.api import TaskResult

__all__ = ["METRIC_MAX", "finite_metrics", "short", "weighted_metrics"]

#: A metric must fit TensorBoard's float32.
METRIC_MAX = float(np.finfo(np.float32).max)


def finite_metrics(
    metrics: Mapping[str, Any] | None, *, source: str, log: logging.Logger, round: int
) -> dict[str, float]:
    """The numbers of ``metrics`` that JSON and TensorBoard can hold: finite,
    within float32's range. Any other number is dropped with a warning naming
    ``source`` and the metric (a site sending 1e308 loses that metric, the
    job goes on); values that are not numbers are not metrics and are left
    out silently."""
    out: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            continue
        try:
            f = float(value)
        except OverflowError:  # an int beyond float's range
            f = math.inf
        if not (math.isfinite(f) and abs(f) <= METRIC_MAX):
            log.warning(
                "round %d: dropped metric %r of %s: %s is not a finite number within "
                "float32's range (|x| <= %.7g)",
                round,
                str(key),
                source,
                short(value),
                METRIC_MAX,
            )
            continue
        out[str(key)] = f
    return out


def weighted_metrics(
    results: Sequence[TaskResult],
    site_metrics: Mapping[str, Mapping[str, float]],
    *,
    log: logging.Logger,
    round: int,
) -> dict[str, float]:
    """Each metric's mean over the sites that reported it, weighted by
    ``num_examples``: ``sum(v * (n / N))``, never ``sum(v * n) / N``, whose
    products overflow (3e38 * 1e9); a mean that is still not finite is
    dropped with a warning, never written."""
    totals: dict[str, int] = {}
    for r in results:
        for key in site_metrics[r.site]:
            totals[key] = totals.get(key, 0) + r.num_examples
    terms: dict[str, list[float]] = {}
    for r in results:
        for key, value in site_metrics[r.site].items():
            terms.setdefault(key, []).append(value * (r.num_examples / totals[key]))
    out: dict[str, float] = {}
    for key, parts in terms.items():
        mean = math.fsum(parts) if all(math.isfinite(p) for p in parts) else math.nan
        if math.isfinite(mean) and abs(mean) <= METRIC_MAX:
            out[key] = mean
        else:
            log.warning(
                "round %d: dropped the aggregated metric %r: its weighted mean is not finite",
                round,
                key,
            )
    return out


def short(value: object) -> str:
    """``value`` for a log line: an int of thousands of digits cut short."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digits limit for str()
        return f"<an int of {value.bit_length()} bits>" if isinstance(value, int) else "?"
    return text if len(text) <= 40 else f"{text[:12]}...({len(text)} chars)"
