"""Aggregation of dicts of arrays: incremental weighted mean, robust aggregates.

mean = WeightedMean()
mean.add(site_a, weight=600)
mean.add(site_b, weight=200)
params = mean.result()
"""

from __future__ import annotations

from shoal.aggregation.robust import median, trimmed_mean
from shoal.aggregation.weighted import WeightedMean

__all__ = ["WeightedMean", "median", "trimmed_mean"]
