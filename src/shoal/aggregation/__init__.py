"""Aggregation of dicts of arrays: incremental weighted mean, robust aggregates.

mean = WeightedMean()
mean.add(site_a, weight=600)
mean.add(site_b, weight=200)
params = mean.result()

A round driver takes them through one factory (``aggregator_factory``):
``weighted_mean`` (FedAvg's), ``median``, ``trimmed_mean``, ``krum`` and
``multi_krum``. ``serveropt`` holds the server optimizers' arithmetic
(FedAvgM, FedAdam, FedYogi, FedAdagrad).
"""

from __future__ import annotations

from shoal.aggregation.factory import (
    Aggregator,
    AggregatorFactory,
    Buffered,
    aggregator_factory,
    aggregator_names,
    weighted_mean,
)
from shoal.aggregation.robust import krum, median, multi_krum, trimmed_mean
from shoal.aggregation.weighted import WeightedMean

__all__ = [
    "Aggregator",
    "AggregatorFactory",
    "Buffered",
    "WeightedMean",
    "aggregator_factory",
    "aggregator_names",
    "krum",
    "median",
    "multi_krum",
    "trimmed_mean",
    "weighted_mean",
]
