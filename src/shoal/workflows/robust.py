"""The round aggregator chosen in job.yml, for every workflow that averages.

A workflow's params class takes these fields beside the driver's
(``class FedAvgParams(AggregatorParams, RoundParams)``), builds its
aggregator with :func:`round_aggregator` and checks the job with
:func:`check_aggregator`::

    workflow:
      name: fedadam
      num_rounds: 20
      aggregator: trimmed_mean   # mean | median | trimmed_mean | krum | multi_krum
      trim_fraction: 0.2

``mean`` is FedAvg's streaming mean weighted by ``num_examples`` (memory of
one model); the others keep every result of the round (memory of N models)
and ignore ``num_examples`` (``shoal.aggregation.robust``). A server update
(FedAdam, say) then steps along the robust aggregate minus the old model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shoal.aggregation import AggregatorFactory, aggregator_factory
from shoal.errors import JobValidationError
from shoal.workflows.driver import needs_initial_model
from shoal.workflows.params import param

__all__ = [
    "AGGREGATORS",
    "AggregatorParams",
    "check_aggregator",
    "needs_model_and_aggregator",
    "round_aggregator",
]

#: The choices of ``aggregator``, in the order the docs list them.
AGGREGATORS = ("mean", "median", "trimmed_mean", "krum", "multi_krum")

# The parameters that only one aggregator (or two) reads.
_OWN = {
    "trim_fraction": ("trimmed_mean",),
    "krum_byzantine": ("krum", "multi_krum"),
    "multi_krum_m": ("multi_krum",),
}
_MAX_SITES = 1_000_000


@dataclass(frozen=True, kw_only=True)
class AggregatorParams:
    """``aggregator`` and its options (keyword-only, so that they go beside
    ``RoundParams``' required ``num_rounds``)."""

    aggregator: str = param(
        "mean",
        doc="how a round's results combine: mean (weighted by num_examples), median, "
        "trimmed_mean, krum, multi_krum (these four ignore num_examples)",
        choices=AGGREGATORS,
    )
    trim_fraction: float = param(
        0.1,
        doc="trimmed_mean: the fraction of values cut at each end, per element",
        lo=0,
        hi=0.5,
        hi_open=True,
    )
    krum_byzantine: int = param(
        1,
        doc="krum, multi_krum: the Byzantine sites tolerated (f); min_clients must be >= 2f + 3",
        lo=0,
        hi=_MAX_SITES,
    )
    multi_krum_m: int = param(
        0,
        doc="multi_krum: the lowest-scored results averaged (0: n - f)",
        lo=0,
        hi=_MAX_SITES,
        note=" (0: the number of results less krum_byzantine)",
    )


def round_aggregator(p: AggregatorParams) -> AggregatorFactory:
    """The aggregator factory ``p`` names."""
    if p.aggregator == "mean":
        return aggregator_factory("weighted_mean")
    if p.aggregator == "trimmed_mean":
        return aggregator_factory("trimmed_mean", trim_fraction=p.trim_fraction)
    if p.aggregator == "krum":
        return aggregator_factory("krum", byzantine=p.krum_byzantine)
    if p.aggregator == "multi_krum":
        return aggregator_factory("multi_krum", byzantine=p.krum_byzantine, m=p.multi_krum_m)
    return aggregator_factory(p.aggregator)


def check_aggregator(spec: Any, workflow: str) -> None:
    """A registry ``check_spec`` part: an option given for an aggregator that
    does not read it, and a Krum the job's ``min_clients`` cannot feed
    (Krum needs ``n >= 2f + 3`` results and a round may go on with
    ``min_clients``), are refused at submit, not in round 1."""
    raw: Mapping[str, Any] = spec.workflow.params
    name = raw.get("aggregator", "mean")
    for key, users in _OWN.items():
        if key in raw and name not in users:
            raise JobValidationError(
                f"job.yml: workflow.{key}: only {' and '.join(users)} read it, "
                f"and the aggregator is {name}"
            )
    if name in ("krum", "multi_krum"):
        f = raw.get("krum_byzantine", 1)
        need = 2 * f + 3
        if spec.min_clients < need:
            raise JobValidationError(
                f"job.yml: min_clients: {workflow} with aggregator {name} and "
                f"krum_byzantine={f} needs min_clients >= 2f + 3 = {need}, got {spec.min_clients}"
            )


def needs_model_and_aggregator(workflow: str) -> Callable[[Any], None]:
    """A registry ``check_spec``: ``needs_initial_model`` and ``check_aggregator``."""
    initial = needs_initial_model(workflow)

    def check(spec: Any) -> None:
        initial(spec)
        check_aggregator(spec, workflow)

    return check
