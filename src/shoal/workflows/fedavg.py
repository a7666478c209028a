"""Federated averaging: scatter the global model, gather, weighted-average.

The round driver (``shoal.workflows.driver``) with FedAvg's two policies:
each round's valid results are folded into an incremental mean weighted by
each site's ``num_examples`` as they arrive, and that mean is the new global
model (``keep_aggregate``: no server state). Everything else — site
sampling, result validation, durability, resume, metrics — is the driver's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from shoal.aggregation import Aggregator, WeightedMean
from shoal.workflows.api import WorkflowContext
from shoal.workflows.driver import (
    DEFAULT_MAX_NUM_EXAMPLES,
    MAX_NUM_EXAMPLES_LIMIT,
    RoundParams,
    needs_initial_model,
    run_rounds,
    select_sites,
)
from shoal.workflows.params import parser
from shoal.workflows.policies import Policies, keep_aggregate

__all__ = [
    "DEFAULT_MAX_NUM_EXAMPLES",
    "MAX_NUM_EXAMPLES_LIMIT",
    "FedAvgParams",
    "check_spec",
    "parse_params",
    "run",
    "select_sites",
]


@dataclass(frozen=True)
class FedAvgParams(RoundParams):
    """FedAvg's ``workflow:`` parameters: the round driver's, nothing more."""


#: Raw ``workflow:`` params -> FedAvgParams; JobValidationError names the field.
parse_params = parser(FedAvgParams, workflow="fedavg")

#: FedAvg needs the initial global model: ``server.model`` or ``server.initial_weights``.
check_spec = needs_initial_model("fedavg")


def _weighted_mean(reuse: Mapping[str, np.ndarray] | None) -> Aggregator:
    return WeightedMean(reuse=reuse)


def run(ctx: WorkflowContext) -> None:
    """Run FedAvg to the end (or resume it); see ``shoal.workflows.driver``."""
    policies = Policies(aggregator=_weighted_mean, update=keep_aggregate)
    run_rounds(ctx, parse_params(ctx.params), policies, workflow="fedavg")
