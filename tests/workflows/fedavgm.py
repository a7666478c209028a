"""A deployment's own workflow, ``my_fedavgm``: server momentum (Hsu et al.
2019) written against shoal's public workflow API in ~30 lines, the way
docs/extending.md shows. shoal ships its own (``fedavgm``,
``shoal.workflows.fedopt``); this one stays outside shoal's registry and is
registered through a ``sitecustomize`` in real daemons
(tests/integration/test_workflow_plugin.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from shoal import workflows as wf
from shoal.aggregation import weighted_mean


@dataclass(frozen=True)
class FedAvgMParams(wf.RoundParams):
    server_lr: float = wf.param(1.0, doc="server learning rate", lo=0, lo_open=True, hi=1e6)
    server_momentum: float = wf.param(0.9, doc="momentum", lo=0, hi=1, hi_open=True)


def momentum(lr: float, beta: float) -> wf.ServerUpdate:
    """Per float array: ``m = beta * m + (aggregate - old)``, ``new = old + lr * m``
    (``m`` starts at 0); other arrays take the aggregate's value."""

    def update(
        old: Mapping[str, np.ndarray], aggregate: dict[str, np.ndarray], state: wf.ServerState, /
    ) -> wf.UpdateResult:
        new: wf.ServerState = {"rounds": int(state.get("rounds", 0)) + 1}  # type: ignore[arg-type]
        for name, agg in aggregate.items():
            if agg.dtype.kind == "f":
                m = agg - old[name] + beta * np.asarray(state.get(f"m/{name}", 0.0), agg.dtype)
                new[f"m/{name}"] = m.astype(agg.dtype)
                aggregate[name] = (old[name] + lr * m).astype(agg.dtype)
        return wf.UpdateResult(params=aggregate, state=new)

    return update


parse_params = wf.parser(FedAvgMParams, workflow="my_fedavgm")


def run(ctx: wf.WorkflowContext) -> None:
    p = parse_params(ctx.params)
    policies = wf.Policies(
        aggregator=weighted_mean, update=momentum(p.server_lr, p.server_momentum)
    )
    wf.run_rounds(ctx, p, policies, workflow="my_fedavgm")


ENTRY = wf.WorkflowEntry(
    name="my_fedavgm",
    run=run,
    parse_params=parse_params,
    check_spec=wf.needs_initial_model("my_fedavgm"),
)
