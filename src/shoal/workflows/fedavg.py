"""Federated averaging: scatter the global model, gather, weighted-average.

The round driver (``shoal.workflows.driver``) with FedAvg's two policies:
each round's valid results are folded into an incremental mean weighted by
each site's ``num_examples`` as they arrive (or into the robust aggregate
``aggregator:`` names, ``shoal.workflows.robust``), and that is the new
global model (``keep_aggregate``: no server state). Everything else — site
sampling, result validation, durability, resume, metrics — is the driver's.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.workflows.api import WorkflowContext
from shoal.workflows.driver import (
    DEFAULT_MAX_NUM_EXAMPLES,
    MAX_NUM_EXAMPLES_LIMIT,
    RoundParams,
    run_rounds,
    select_sites,
)
from shoal.workflows.params import parser
from shoal.workflows.policies import Policies, keep_aggregate
from shoal.workflows.robust import AggregatorParams, needs_model_and_aggregator, round_aggregator

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
class FedAvgParams(AggregatorParams, RoundParams):
    """FedAvg's ``workflow:`` parameters: the round driver's and the aggregator's."""


#: Raw ``workflow:`` params -> FedAvgParams; JobValidationError names the field.
parse_params = parser(FedAvgParams, workflow="fedavg")

#: FedAvg needs the initial global model (``server.model`` or
#: ``server.initial_weights``) and enough sites for a Krum aggregator.
check_spec = needs_model_and_aggregator("fedavg")


def run(ctx: WorkflowContext) -> None:
    """Run FedAvg to the end (or resume it); see ``shoal.workflows.driver``."""
    p = parse_params(ctx.params)
    policies = Policies(aggregator=round_aggregator(p), update=keep_aggregate)
    run_rounds(ctx, p, policies, workflow="fedavg")
