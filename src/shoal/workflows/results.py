"""What the server does with a site's result before it is folded.

A result is checked against the global model (names, shapes, dtypes, finite
values, a sane ``num_examples``) by :func:`validate_result`, a ``diff`` result
is turned back into weights, and the job's server-side filters
(``result_in``, ``model_out``) are built once per run by
:func:`server_filters` and applied by :func:`apply_filters`. A result kept
after folding keeps no reference to its arrays (:func:`without_arrays`).
Shared by the round driver and the workflows outside it (FedBuff, cyclic,
evaluation).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from shoal.arrays import check_compatible, check_finite
from shoal.client.model import FLModel
from shoal.errors import ArrayFormatError, ConfigError, JobFailedError
from shoal.filters import SERVER_POINTS, FilterChain, build_chain
from shoal.taskmeta import join_extras
from shoal.workflows.api import InMemoryResult, TaskResult, WorkflowContext
from shoal.workflows.metrics import short

__all__ = [
    "apply_filters",
    "check_num_examples",
    "filter_result",
    "plus_global",
    "server_filters",
    "validate_result",
    "without_arrays",
]


def validate_result(
    result: TaskResult,
    reference: Mapping[str, tuple[str, tuple[int, ...]]],
    *,
    max_num_examples: int,
    global_model: Callable[[], Mapping[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    check_num_examples(result.num_examples, max_num_examples)
    arrays = result.arrays()
    check_compatible(reference, arrays)
    check_finite(arrays)
    if result.params_type == "diff":
        arrays = plus_global(arrays, global_model())
        check_finite(arrays)
    return arrays


def plus_global(
    diff: Mapping[str, np.ndarray], global_model: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """A ``params_type: diff`` result as weights: the global model it was sent
    plus the difference (bool arrays, which have no difference, travel whole)."""
    out: dict[str, np.ndarray] = {}
    with np.errstate(over="ignore", invalid="ignore"):
        for name, d in diff.items():
            out[name] = d if d.dtype == np.bool_ else np.add(global_model[name], d, dtype=d.dtype)
    return out


def server_filters(ctx: WorkflowContext) -> dict[str, FilterChain]:
    """The job's server-side filter chains (``result_in``, ``model_out``), built."""
    filters = getattr(ctx.spec, "filters", None) or {}
    return {
        point: build_chain(point, filters[point], app_dir=ctx.app_dir)
        for point in SERVER_POINTS
        if filters.get(point)
    }


def apply_filters(
    chain: FilterChain,
    model: FLModel,
    *,
    job_id: str,
    site: str,
    round: int,
    reference: Mapping[str, np.ndarray] | None = None,
) -> FLModel:
    """``model`` through ``chain``; ``reference`` is the global model a
    result answers (``FilterContext.reference``). A failing filter fails the job."""
    try:
        return chain.apply(
            model, job_id=job_id, site=site, round=round, task=model.task, reference=reference
        )
    except ConfigError as exc:
        raise JobFailedError(f"round {round}: {exc}") from exc


def filter_result(
    chain: FilterChain,
    result: TaskResult,
    *,
    job_id: str,
    round: int,
    total_rounds: int | None,
    reference: Mapping[str, np.ndarray] | None,
) -> InMemoryResult:
    """``result`` through the ``result_in`` ``chain``, as an in-memory result;
    ``reference`` is the global model it answers. A failing filter fails the job."""
    model = FLModel(
        params=result.arrays(),
        extras=result.extras(),
        metrics=dict(result.metrics),
        num_examples=result.num_examples,
        meta=dict(result.meta),
        params_type=result.params_type,
        current_round=round,
        total_rounds=total_rounds,
        task="train",
    )
    out = apply_filters(
        chain, model, job_id=job_id, site=result.site, round=round, reference=reference
    )
    return InMemoryResult(
        site=result.site,
        task_id=result.task_id,
        round=result.round,
        num_examples=out.num_examples,
        metrics=dict(out.metrics),
        path=Path(),
        meta=dict(out.meta),
        params_type=out.params_type,
        params=join_extras(out.params, out.extras),
    )


def without_arrays(result: TaskResult) -> TaskResult:
    """What a round keeps of a folded result: no reference to its arrays."""
    if isinstance(result, InMemoryResult):
        return TaskResult(
            site=result.site,
            task_id=result.task_id,
            round=result.round,
            num_examples=result.num_examples,
            metrics=result.metrics,
            path=Path(),
            meta=result.meta,
            params_type=result.params_type,
        )
    return result


def check_num_examples(n: object, max_num_examples: int) -> int:
    """``n`` if it is an integer in ``[1, max_num_examples]``; ArrayFormatError otherwise."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ArrayFormatError(f"num_examples is {short(n)}, must be an integer")
    if n <= 0:
        raise ArrayFormatError(f"num_examples is {n}, must be > 0")
    if n > max_num_examples:
        # Compared as ints: a float of 10**400 would raise, not compare.
        raise ArrayFormatError(
            f"num_examples is {short(n)}, over the job's "
            f"workflow.max_num_examples={max_num_examples}"
        )
    return int(n)
