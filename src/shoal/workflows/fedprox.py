"""FedProx (Li et al., "Federated Optimization in Heterogeneous Networks",
MLSys 2020): FedAvg's rounds, and each site adds the proximal term
``(mu / 2) * ||w - w_global||**2`` to its local loss, which keeps a site's
model near the global one it started the round from when data differ.

The server's part is small: ``mu`` from job.yml travels in every task's
meta as ``fedprox_mu``; the aggregate is FedAvg's (or the robust one that
``aggregator:`` names). The sites' part is one line with the client
helpers, ``shoal.frameworks.torch.proximal_term`` and
``shoal.frameworks.keras.proximal_term`` / ``ProximalTerm``::

    workflow:
      name: fedprox
      num_rounds: 20
      mu: 0.01
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.frameworks.proximal import MU_KEY
from shoal.workflows.api import WorkflowContext
from shoal.workflows.driver import RoundParams, run_rounds
from shoal.workflows.params import param, parser
from shoal.workflows.policies import Policies, keep_aggregate
from shoal.workflows.robust import AggregatorParams, needs_model_and_aggregator, round_aggregator

__all__ = ["MU_KEY", "FedProxParams", "check_spec", "parse_params", "run"]


@dataclass(frozen=True)
class FedProxParams(AggregatorParams, RoundParams):
    """``fedprox``: FedAvg's parameters and the proximal term's weight."""

    mu: float = param(
        0.01,
        doc="weight of the proximal term (mu/2)*||w - w_global||^2 in each site's loss "
        "(0: FedAvg); the paper tries 0.001, 0.01, 0.1 and 1",
        lo=0,
        hi=1e4,
    )


#: Raw ``workflow:`` params -> FedProxParams; JobValidationError names the field.
parse_params = parser(FedProxParams, workflow="fedprox")

#: The initial global model, and what the round aggregator needs.
check_spec = needs_model_and_aggregator("fedprox")


def run(ctx: WorkflowContext) -> None:
    """Run (or resume) FedProx; see ``shoal.workflows.driver``."""
    p = parse_params(ctx.params)
    policies = Policies(
        aggregator=round_aggregator(p), update=keep_aggregate, task_meta={MU_KEY: p.mu}
    )
    run_rounds(ctx, p, policies, workflow="fedprox")
