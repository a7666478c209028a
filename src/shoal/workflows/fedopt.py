"""Server optimizers as workflows: FedAvgM, FedAdam, FedYogi, FedAdagrad.

FedAvg's rounds (the round driver, the sites' weighted mean) with another
server update (``shoal.aggregation.serveropt``): the aggregate minus the
model the sites trained from is a pseudo-gradient the server steps along,
keeping momentum ``m`` (and, for the adaptive ones, ``v``) from round to
round. The state, one or two arrays per floating-point weight, is
checkpointed with each round and comes back on resume::

    workflow:
      name: fedadam
      num_rounds: 50
      server_lr: 0.01      # eta
      beta1: 0.9
      beta2: 0.99
      tau: 0.001

Integer and bool arrays (``num_batches_tracked``, masks) take the
aggregate's value, as under FedAvg.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from shoal.aggregation.serveropt import Scratch, adaptive_step, momentum_step, state_dtype
from shoal.arrays import is_floating
from shoal.workflows.api import WorkflowContext, WorkflowFn
from shoal.workflows.driver import RoundParams, run_rounds
from shoal.workflows.params import param, parser
from shoal.workflows.policies import Policies, ServerState, ServerUpdate, UpdateResult
from shoal.workflows.robust import AggregatorParams, round_aggregator

__all__ = [
    "AdaptiveParams",
    "FedAvgMParams",
    "adaptive",
    "momentum",
]

_MAX_LR = 1e6


@dataclass(frozen=True)
class FedAvgMParams(AggregatorParams, RoundParams):
    """``fedavgm``: server momentum (Hsu et al. 2019)."""

    server_lr: float = param(0.1, doc="server learning rate (eta)", lo=0, lo_open=True, hi=_MAX_LR)
    server_momentum: float = param(0.9, doc="server momentum (beta)", lo=0, hi=1, hi_open=True)


@dataclass(frozen=True)
class AdaptiveParams(AggregatorParams, RoundParams):
    """``fedadam``, ``fedyogi``, ``fedadagrad`` (Reddi et al. 2021)."""

    server_lr: float = param(0.01, doc="server learning rate (eta)", lo=0, lo_open=True, hi=_MAX_LR)
    beta1: float = param(0.9, doc="decay of the first moment m", lo=0, hi=1, hi_open=True)
    beta2: float = param(
        0.99, doc="decay of the second moment v (adam, yogi)", lo=0, hi=1, hi_open=True
    )
    tau: float = param(
        1e-3, doc="adaptivity: added to sqrt(v); v starts at tau**2", lo=0, lo_open=True, hi=1e3
    )


def _state_array(state: ServerState, key: str, like: np.ndarray, fill: float) -> np.ndarray:
    """``state[key]`` as an array this round may change in place (the state
    dtype of ``like``'s, its shape), or a new one filled with ``fill``."""
    dtype = state_dtype(like.dtype)
    have = state.get(key)
    if isinstance(have, np.ndarray) and have.shape == like.shape and have.dtype == dtype:
        if have.flags.writeable and have.flags.c_contiguous:
            return have
        return np.array(have, order="C")
    return np.full(like.shape, fill, dtype)


def _rounds(state: ServerState) -> int:
    n = state.get("rounds", 0)
    return n if isinstance(n, int) and not isinstance(n, bool) else 0


def momentum(lr: float, beta: float) -> ServerUpdate:
    """FedAvgM's update: per floating array ``m <- beta * m + (aggregate - old)``,
    ``new = old + lr * m`` (``m`` from 0); the state is ``m/<name>`` and ``rounds``."""

    def update(
        old: Mapping[str, np.ndarray], aggregate: dict[str, np.ndarray], state: ServerState, /
    ) -> UpdateResult:
        new: ServerState = {"rounds": _rounds(state) + 1}
        scratch = Scratch()
        for name, agg in aggregate.items():
            if not is_floating(agg.dtype):
                continue
            m = _state_array(state, f"m/{name}", agg, 0.0)
            momentum_step(old[name], agg, m, lr=lr, beta=beta, scratch=scratch)
            new[f"m/{name}"] = m
        return UpdateResult(params=aggregate, state=new)

    return update


def adaptive(rule: str, *, lr: float, beta1: float, beta2: float, tau: float) -> ServerUpdate:
    """FedAdagrad, FedAdam or FedYogi (``rule``: ``adagrad``, ``adam``, ``yogi``);
    the state is ``m/<name>``, ``v/<name>`` and ``rounds``."""

    def update(
        old: Mapping[str, np.ndarray], aggregate: dict[str, np.ndarray], state: ServerState, /
    ) -> UpdateResult:
        new: ServerState = {"rounds": _rounds(state) + 1}
        scratch = Scratch()
        for name, agg in aggregate.items():
            if not is_floating(agg.dtype):
                continue
            m = _state_array(state, f"m/{name}", agg, 0.0)
            v = _state_array(state, f"v/{name}", agg, tau * tau)
            adaptive_step(
                old[name],
                agg,
                m,
                v,
                rule=rule,  # type: ignore[arg-type]
                lr=lr,
                beta1=beta1,
                beta2=beta2,
                tau=tau,
                scratch=scratch,
            )
            new[f"m/{name}"], new[f"v/{name}"] = m, v
        return UpdateResult(params=aggregate, state=new)

    return update


parse_fedavgm = parser(FedAvgMParams, workflow="fedavgm")
parse_fedadam = parser(AdaptiveParams, workflow="fedadam")
parse_fedyogi = parser(AdaptiveParams, workflow="fedyogi")
parse_fedadagrad = parser(AdaptiveParams, workflow="fedadagrad")


def run_fedavgm(ctx: WorkflowContext) -> None:
    """Run (or resume) FedAvgM; see ``shoal.workflows.driver``."""
    p = parse_fedavgm(ctx.params)
    policies = Policies(
        aggregator=round_aggregator(p), update=momentum(p.server_lr, p.server_momentum)
    )
    run_rounds(ctx, p, policies, workflow="fedavgm")


def _adaptive_run(
    rule: str, workflow: str, parse: Callable[[Mapping[str, Any]], AdaptiveParams]
) -> WorkflowFn:
    def run(ctx: WorkflowContext) -> None:
        p = parse(ctx.params)
        update = adaptive(rule, lr=p.server_lr, beta1=p.beta1, beta2=p.beta2, tau=p.tau)
        run_rounds(
            ctx, p, Policies(aggregator=round_aggregator(p), update=update), workflow=workflow
        )

    run.__doc__ = f"Run (or resume) {workflow}; see ``shoal.workflows.driver``."
    return run


run_fedadam = _adaptive_run("adam", "fedadam", parse_fedadam)
run_fedyogi = _adaptive_run("yogi", "fedyogi", parse_fedyogi)
run_fedadagrad = _adaptive_run("adagrad", "fedadagrad", parse_fedadagrad)
