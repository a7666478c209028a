"""Federated evaluation: one given model evaluated at every site, no training.

job.yml::

    workflow:
      name: evaluate
      model_path: models/global_final.safetensors   # in app/; or leave it out and
    server:                                          # give server.model / initial_weights
      initial_weights: "model:initial_weights"

The model goes to every site as one ``validate`` task; each site answers
with its metrics and the number of examples it evaluated
(docs/client-api.md). The result, in the run folder:

    models/evaluated.safetensors   the model that was evaluated
    metrics.jsonl                  one line (round 0): each site's metrics, their
                                   mean weighted by num_examples, who is missing
    evaluation.json                the same, with where the model came from and why
                                   a site is missing

Fewer than ``min_clients`` valid answers fail the job.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from shoal.arrays import check_finite, load_arrays, save_arrays
from shoal.errors import ArrayFormatError, JobFailedError, JobValidationError
from shoal.workflows.api import WorkflowContext
from shoal.workflows.driver import (
    DEFAULT_MAX_NUM_EXAMPLES,
    MAX_NUM_EXAMPLES_LIMIT,
)
from shoal.workflows.evaluation import Limits, sites_taking_part, validate_at_sites
from shoal.workflows.params import load_params, param
from shoal.workflows.servermodel import initial_params, server_model_of
from shoal.workflows.store import RoundStore, atomic_write_bytes

__all__ = [
    "EvaluateParams",
    "check_spec",
    "given_model",
    "no_server_filters",
    "parse_params",
    "run",
]

_MAX_TIMEOUT_S = 30 * 24 * 3600.0
#: The summary's name in the run folder.
SUMMARY_FILE = "evaluation.json"
#: The evaluated model's name in ``models/``.
MODEL_FILE = "evaluated.safetensors"


@dataclass(frozen=True)
class EvaluateParams:
    """The ``workflow:`` parameters of ``evaluate`` (and ``cross_site_eval``)."""

    #: A weights file (``.safetensors``) in the job's ``app/`` folder, e.g. a
    #: ``global_final.safetensors`` downloaded from a training job; empty:
    #: the model ``server.model`` or ``server.initial_weights`` gives.
    model_path: str = param(
        "",
        doc="a .safetensors weights file in app/ (default: server.model / initial_weights)",
    )
    #: Seconds a task waits for the sites' answers, then goes on with what it has.
    round_timeout_s: float = param(
        600.0,
        doc="seconds a task waits for answers; then it goes on with what it has",
        lo=0,
        lo_open=True,
        hi=_MAX_TIMEOUT_S,
        text=f"> 0 and <= {_MAX_TIMEOUT_S:.0f}",
    )
    #: The most ``num_examples`` an answer may claim (as in the round workflows).
    max_num_examples: int = param(
        DEFAULT_MAX_NUM_EXAMPLES,
        doc="the most num_examples a result may claim",
        lo=1,
        hi=MAX_NUM_EXAMPLES_LIMIT,
        text="[1, 2**53]",
    )

    @property
    def limits(self) -> Limits:
        return Limits(timeout_s=self.round_timeout_s, max_num_examples=self.max_num_examples)


def _check_model_path(value: str) -> None:
    if not value:
        return
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or "\\" in value:
        raise JobValidationError(
            f"job.yml: workflow.model_path: must be a path inside app/, got {value!r}"
        )
    if path.suffix != ".safetensors":
        raise JobValidationError(
            f"job.yml: workflow.model_path: must be a .safetensors file, got {value!r}"
        )


def parse_params(raw: Mapping[str, Any], *, workflow: str = "evaluate") -> EvaluateParams:
    """Raw ``workflow:`` params -> EvaluateParams; JobValidationError names the field."""
    params = load_params(EvaluateParams, raw, workflow=workflow)
    _check_model_path(params.model_path)
    return params


def no_server_filters(workflow: str, spec: Any) -> None:
    """Refuse server-side filters (``result_in``, ``model_out``) a workflow does not run."""
    filters = getattr(spec, "filters", None) or {}
    for point in ("result_in", "model_out"):
        if filters.get(point):
            raise JobValidationError(
                f"job.yml: filters.{point}: the {workflow} workflow does not run server-side "
                "filters (result_in, model_out); remove them (site filters still run)"
            )


def model_source_check(workflow: str) -> Callable[[Any], None]:
    """A registry ``check_spec``: the model to evaluate is given (``model_path``,
    ``server.model`` or ``server.initial_weights``), and no server filters."""

    def check(spec: Any) -> None:
        params = parse_params(spec.workflow.params, workflow=workflow)
        server = spec.server
        if not params.model_path and not server.model and not server.initial_weights:
            raise JobValidationError(
                f"job.yml: {workflow} needs the model to evaluate: workflow.model_path "
                "(a .safetensors file in app/), server.model or server.initial_weights"
            )
        no_server_filters(workflow, spec)

    return check


check_spec = model_source_check("evaluate")


def given_model(
    ctx: WorkflowContext, model_path: str, *, workflow: str
) -> tuple[dict[str, np.ndarray], str]:
    """The model to evaluate, and where it came from: ``app/<model_path>``, or
    ``"initial"`` (``server.model`` / ``server.initial_weights``)."""
    if not model_path:
        return initial_params(ctx, server_model_of(ctx), workflow), "initial"
    app = ctx.app_dir.resolve()
    path = (app / model_path).resolve()
    origin = f"workflow.model_path {model_path!r}"
    if not path.is_relative_to(app) or not path.is_file():
        raise JobFailedError(f"{origin}: no such file in app/")
    try:
        # Mapped, not read: it is only checked and copied into the run folder.
        params = load_arrays(path, mmap=True)
        if not params:
            raise ArrayFormatError("the file holds no arrays")
        check_finite(params)
    except ArrayFormatError as exc:
        raise JobFailedError(f"{origin}: {exc}") from None
    return params, f"app/{PurePosixPath(model_path)}"


def run(ctx: WorkflowContext) -> None:
    """Evaluate the given model at every site; see the module docstring."""
    p = parse_params(ctx.params)
    log, comm = ctx.logger, ctx.comm
    try:
        sites = sites_taking_part(ctx)
        min_clients = int(ctx.spec.min_clients)
        params, source = given_model(ctx, p.model_path, workflow="evaluate")
        model = save_arrays(ctx.run_dir / "models" / MODEL_FILE, params)
        del params
        started, started_wall = time.monotonic(), time.time()
        evals = validate_at_sites(
            ctx, model=model, label="global", sites=sites, round=0, limits=p.limits
        )
        duration = time.monotonic() - started
        aggregated = evals.aggregated(log)
        missing = sorted(evals.missing)
        RoundStore(ctx.run_dir).append_metrics(
            {
                "round": 0,
                "started": round(started_wall, 3),
                "num_examples": evals.num_examples,
                "sites": evals.metrics,
                "aggregated": aggregated,
                "duration_s": round(duration, 3),
                "missing": missing,
            }
        )
        summary = {
            "model": source,
            "num_examples": evals.num_examples,
            "aggregated": aggregated,
            "sites": evals.cells(),
            "missing": evals.missing,
        }
        atomic_write_bytes(
            ctx.run_dir / SUMMARY_FILE, json.dumps(summary, indent=1, allow_nan=False).encode()
        )
        comm.report(
            round=0,
            status="round_done",
            num_examples=evals.num_examples,
            sites={s: ("ok" if s in evals.results else "missing") for s in sites},
            metrics=aggregated,
            evaluation=aggregated,
            duration_s=duration,
        )
        log.info(
            "evaluate: model %s evaluated by %d/%d site(s), %d examples%s",
            source,
            len(evals.results),
            len(sites),
            evals.num_examples,
            "".join(f", {m}={v:.4g}" for m, v in aggregated.items()),
        )
        if len(evals.results) < min_clients:
            reasons = "; ".join(f"{s}: {evals.missing[s]}" for s in missing)
            raise JobFailedError(
                f"only {len(evals.results)} of the required min_clients={min_clients} sites "
                f"evaluated the model ({reasons})"
            )
    finally:
        comm.finish()
