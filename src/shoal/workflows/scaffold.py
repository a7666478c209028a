"""SCAFFOLD: federated averaging with control variates against client drift
(Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning", ICML 2020, Algorithm 1).

The round driver (``shoal.workflows.driver``) with three policies:

* **down** (``task_extras``): each round's task carries the server control
  variate ``c`` beside the global model ``x``, as extras ``c/<name>``
  (nothing in round 1, where ``c = 0``);
* **aggregate** (:class:`ScaffoldAggregator`, ``fold_extras``): the plain
  mean of the sites' models ``y_i`` and the sum of their control-variate
  changes ``delta_c/<name>`` (``c_i+ - c_i``) divided by ``N``, the number
  of sites in the job;
* **update** (:func:`scaffold_update`): ``x <- x + lr_g * (mean(y_i) - x)``
  and ``c <- c + (1/N) * sum(delta c_i)`` (= ``c + |S|/N * mean(delta c_i)``
  over the ``|S|`` sites that answered), ``c`` kept in the server state
  (checkpointed with each round, back on resume).

The mean of the models is **uniform** over the sites that answered, as in
the paper (``delta x = 1/|S| sum(y_i - x)``), not weighted by
``num_examples``. With ``server_lr`` 1 (the default) the new model is that
mean itself. Sites keep ``c_i`` and compute the option-II update
(``shoal.client.scaffold``; helpers for PyTorch and Keras in
``shoal.frameworks``); a result without ``delta_c/`` extras is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from shoal.aggregation import Aggregator, WeightedMean
from shoal.arrays import is_floating
from shoal.client.scaffold import C_PREFIX, DELTA_PREFIX
from shoal.errors import ArrayFormatError, ShoalError
from shoal.taskmeta import EXTRAS_PREFIX, split_extras
from shoal.workflows.api import WorkflowContext
from shoal.workflows.driver import RoundParams, needs_initial_model, run_rounds
from shoal.workflows.params import param, parser
from shoal.workflows.policies import Policies, ServerState, ServerUpdate, UpdateResult

__all__ = [
    "ScaffoldAggregator",
    "ScaffoldParams",
    "check_spec",
    "parse_params",
    "run",
    "scaffold_update",
    "server_control_variate",
]

#: The state's key of the server control variate of weight ``w``: ``c/w``,
#: which is also its name among a task's extras.
_C = C_PREFIX
#: Where the aggregate holds ``(1/N) sum(delta c_i)`` of weight ``w``.
_STEP = EXTRAS_PREFIX + DELTA_PREFIX


@dataclass(frozen=True)
class ScaffoldParams(RoundParams):
    """SCAFFOLD's ``workflow:`` parameters: the round driver's and the global step size."""

    #: ``eta_g``: the global model moves by ``server_lr`` times the mean of the
    #: sites' changes. 1: it becomes the mean of the sites' models, as in
    #: FedAvg.
    server_lr: float = param(
        1.0,
        doc="global step size eta_g: x <- x + eta_g * mean(y_i - x)",
        lo=0,
        lo_open=True,
        hi=1e6,
    )


#: Raw ``workflow:`` params -> ScaffoldParams; JobValidationError names the field.
parse_params = parser(ScaffoldParams, workflow="scaffold")

#: SCAFFOLD needs the initial global model: ``server.model`` or ``server.initial_weights``.
check_spec = needs_initial_model("scaffold")


class ScaffoldAggregator:
    """One round's mean of the models (uniform) and ``(1/N) sum(delta c_i)``.

    ``add`` takes a result's weights with its extras (``join_extras``):
    every ``delta_c/<name>`` must name a floating weight of the result, with
    its shape and dtype, and every result of the round must carry the same
    names (ArrayFormatError otherwise, nothing changed); other extras are
    ignored. ``result`` gives the mean and, under the extras prefix,
    ``delta_c/<name>`` = the sum divided by ``num_sites``.
    """

    def __init__(self, num_sites: int, reuse: Mapping[str, np.ndarray] | None = None) -> None:
        if num_sites < 1:
            raise ValueError(f"num_sites must be >= 1, got {num_sites}")
        self._num_sites = num_sites
        self._mean = WeightedMean(reuse=reuse)
        self._sums: dict[str, np.ndarray] | None = None
        self._done = False

    def add(self, arrays: Mapping[str, np.ndarray], weight: float) -> None:
        if self._done:
            raise ShoalError("ScaffoldAggregator.add() after result()")
        params, extras = split_extras(arrays)
        deltas = {
            k[len(DELTA_PREFIX) :]: np.asarray(v)
            for k, v in extras.items()
            if k.startswith(DELTA_PREFIX)
        }
        # Checked before anything is folded in, and the mean checks the
        # weights before it changes: a refused result changes nothing.
        self._check(params, deltas)
        # Uniform over the sites, as the paper's mean of y_i - x: every
        # result weighs 1, whatever its num_examples.
        self._mean.add(params, weight=1.0)
        if self._sums is None:
            self._sums = {
                n: np.array(d, dtype=_sum_dtype(d.dtype), copy=True) for n, d in deltas.items()
            }
            return
        for name, d in deltas.items():
            self._sums[name] += d

    def _check(self, params: Mapping[str, np.ndarray], deltas: Mapping[str, np.ndarray]) -> None:
        if not deltas:
            raise ArrayFormatError(
                f"no control-variate change ({DELTA_PREFIX}<name> extras): a SCAFFOLD site "
                "sends its c_i+ - c_i beside its weights (shoal.client.scaffold)"
            )
        for name, d in deltas.items():
            w = params.get(name)
            if w is None:
                raise ArrayFormatError(f"{DELTA_PREFIX}{name}: {name!r} is not a weight")
            w = np.asarray(w)
            if not is_floating(w.dtype):
                raise ArrayFormatError(f"{DELTA_PREFIX}{name}: {name!r} is not a floating weight")
            if d.shape != w.shape or d.dtype != w.dtype:
                raise ArrayFormatError(
                    f"{DELTA_PREFIX}{name}: {d.dtype}{list(d.shape)} differs from the weight's "
                    f"{w.dtype}{list(w.shape)}"
                )
        if self._sums is not None and set(deltas) != set(self._sums):
            raise ArrayFormatError(
                f"{DELTA_PREFIX}: the result's control variates name "
                f"{sorted(set(deltas) ^ set(self._sums))[:3]} unlike the round's first result"
            )

    def result(self) -> dict[str, np.ndarray]:
        if self._sums is None:
            raise ArrayFormatError("nothing to aggregate: no contribution was added")
        self._done = True
        out = self._mean.result()
        for name, total in self._sums.items():
            dtype = out[name].dtype
            with np.errstate(over="ignore", invalid="ignore"):
                step = (total / self._num_sites).astype(dtype)
            if not np.isfinite(step).all():
                raise ArrayFormatError(f"{DELTA_PREFIX}{name}: the sum of the changes overflows")
            out[_STEP + name] = step
        return out


def _sum_dtype(dtype: np.dtype) -> np.dtype:
    # Half-precision changes are summed in float32: 8 or 11 bits would
    # round away the small ones.
    return np.dtype(np.float32) if dtype.itemsize < 4 else dtype


def server_control_variate(state: ServerState) -> dict[str, np.ndarray]:
    """The task's extras: ``c`` from the state, ``{"c/<name>": array}``
    (``{}`` before round 1 has ended: ``c = 0``)."""
    return {k: v for k, v in state.items() if k.startswith(_C) and isinstance(v, np.ndarray)}


def scaffold_update(server_lr: float = 1.0) -> ServerUpdate:
    """``x <- x + server_lr * (mean - x)`` on floating weights (the mean
    itself when ``server_lr`` is 1; other weights take the mean's value) and
    ``c <- c + step``, where the aggregate holds the mean and the step
    (:class:`ScaffoldAggregator`); ``c`` lives in the state as ``c/<name>``."""

    def update(
        old: Mapping[str, np.ndarray], aggregate: dict[str, np.ndarray], state: ServerState, /
    ) -> UpdateResult:
        params, extras = split_extras(aggregate)
        new_state: ServerState = dict(state)
        for key, step in extras.items():
            if not key.startswith(DELTA_PREFIX):
                continue
            name = _C + key[len(DELTA_PREFIX) :]
            prev = state.get(name)
            if isinstance(prev, np.ndarray):
                new_state[name] = (prev + step).astype(step.dtype)
            else:
                new_state[name] = np.array(step, copy=True)
        if server_lr != 1.0:
            for name, mean in params.items():
                if is_floating(mean.dtype):
                    x = np.asarray(old[name])
                    moved = x.astype(np.float64) + server_lr * (
                        mean.astype(np.float64) - x.astype(np.float64)
                    )
                    params[name] = moved.astype(mean.dtype)
        return UpdateResult(params=params, state=new_state)

    return update


def run(ctx: WorkflowContext) -> None:
    """Run SCAFFOLD to the end (or resume it); see ``shoal.workflows.driver``."""
    p = parse_params(ctx.params)
    num_sites = len(ctx.comm.sites())

    def aggregator(reuse: Mapping[str, np.ndarray] | None) -> Aggregator:
        return ScaffoldAggregator(num_sites, reuse=reuse)

    policies = Policies(
        aggregator=aggregator,
        update=scaffold_update(p.server_lr),
        task_extras=server_control_variate,
        fold_extras=True,
    )
    run_rounds(ctx, p, policies, workflow="scaffold")
