"""The policies a round driver composes: how results aggregate, how the
global model moves.

A server update turns the round's aggregate into the new global model::

    def update(old, aggregate, state):       # FedAvg: the aggregate, no state
        return UpdateResult(params=aggregate, state=state)

``old`` is the global model the round's sites trained from (read-only,
memory-mapped), ``aggregate`` what the round's aggregator gave (the update
may change it in place), ``state`` what the update returned last round
(``{}`` in the first round). State maps names to numpy arrays or JSON
scalars (``int``, ``float``, ``str``, ``bool``, ``None``); the driver
checkpoints it with each round and hands it back on resume.

Two more policies let an algorithm exchange arrays beside the weights
(``FLModel.extras``), e.g. SCAFFOLD's control variates: ``task_extras``
turns the state into the arrays each round's task carries down with the
model, and ``fold_extras`` has the aggregator get each result's extras
too. Neither costs anything when unset, as FedAvg leaves them. And
``task_meta`` adds the workflow's own keys to every task's meta (FedProx's
``fedprox_mu``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from shoal.aggregation import AggregatorFactory

__all__ = [
    "Policies",
    "PrepareResult",
    "ServerState",
    "ServerUpdate",
    "TaskExtras",
    "UpdateResult",
    "check_state",
    "keep_aggregate",
]

#: A JSON scalar a server update may keep in its state.
Scalar = int | float | str | bool | None
#: A server update's state: named arrays and JSON scalars.
ServerState = dict[str, np.ndarray | Scalar]


@dataclass(frozen=True)
class UpdateResult:
    """What a server update returns."""

    #: The new global model: the names, shapes and dtypes of the old one.
    params: dict[str, np.ndarray]
    #: The state the next round's update gets (checkpointed with the round).
    state: ServerState


class ServerUpdate(Protocol):
    def __call__(
        self,
        old: Mapping[str, np.ndarray],
        aggregate: dict[str, np.ndarray],
        state: ServerState,
        /,
    ) -> UpdateResult: ...


def keep_aggregate(
    old: Mapping[str, np.ndarray], aggregate: dict[str, np.ndarray], state: ServerState, /
) -> UpdateResult:
    """FedAvg's update: the aggregate is the new global model; no state."""
    return UpdateResult(params=aggregate, state=state)


#: State -> the named arrays a round's task carries beside the model.
TaskExtras = Callable[[ServerState], Mapping[str, np.ndarray]]
#: (a valid result's weights, the model its site trained from, the state)
#: -> what the aggregator gets in their place.
PrepareResult = Callable[
    [dict[str, np.ndarray], Mapping[str, np.ndarray], ServerState], dict[str, np.ndarray]
]


@dataclass(frozen=True)
class Policies:
    """What makes one workflow differ from another under the same driver."""

    #: Makes each round's aggregator (``shoal.aggregation.aggregator_factory``).
    aggregator: AggregatorFactory
    #: Aggregate -> new global model.
    update: ServerUpdate = keep_aggregate
    #: The arrays round ``k``'s task carries beside the model (a site reads
    #: them as ``task.extras``), from the state the update returned after
    #: round ``k - 1`` (``{}`` before round 1). When it gives none the task
    #: is the model file as it is; otherwise the driver writes the model and
    #: these into the round's published file (``run/published/``), through
    #: the ``model_out`` filters if the job has any.
    task_extras: TaskExtras | None = None
    #: The aggregator's ``add`` gets each result's extras too, beside its
    #: weights under ``shoal.taskmeta.EXTRAS_PREFIX`` (``join_extras``), after
    #: the driver checked them finite; the aggregate may hold them, and the
    #: update must take them out (``split_extras``): the new global model
    #: has the old one's names. False: extras never reach the aggregator.
    fold_extras: bool = False
    #: The workflow's own keys in every task's meta (JSON scalars, e.g.
    #: FedProx's ``{"fedprox_mu": 0.01}``), beside the driver's
    #: ``current_round`` and ``total_rounds``, over the job's ``client.config``.
    task_meta: Mapping[str, Any] = field(default_factory=dict)
    #: Each valid result's weights before they are folded, with the model
    #: the round's sites trained from and the state (central DP clips each
    #: site's update here). None: folded as they came.
    prepare_result: PrepareResult | None = None
    #: The state after round ``k``'s update -> figures recorded with the
    #: round's server metrics (central DP's epsilon so far).
    round_metrics: Callable[[ServerState], dict[str, float]] | None = None
    #: ``(k, state)`` before round ``k`` is offered -> a reason to end the
    #: job there, completed, with round ``k - 1``'s model (a privacy budget
    #: the next round would exceed); None goes on.
    stop_before: Callable[[int, ServerState], str | None] | None = None


def check_state(state: object) -> ServerState:
    """``state`` if it is a dict of str -> array or finite JSON scalar;
    TypeError naming the entry otherwise (a bug in the update, not the job)."""
    if not isinstance(state, dict):
        raise TypeError(f"a server update's state must be a dict, got {type(state).__name__}")
    for name, value in state.items():
        if not isinstance(name, str):
            raise TypeError(f"server state: names must be strings, got {name!r}")
        if isinstance(value, np.ndarray) or value is None or isinstance(value, (bool, int, str)):
            continue
        if isinstance(value, float) and math.isfinite(value):
            continue
        raise TypeError(
            f"server state {name!r}: must be a numpy array or a finite JSON scalar, "
            f"got {type(value).__name__}"
        )
    return state
