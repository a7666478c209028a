"""Evaluation tasks: a model evaluated at the sites, and the cross-site matrix.

Pieces the ``evaluate`` and ``cross_site_eval`` workflows (and a round
workflow's ``evaluate_after`` phase) are made of::

    limits = Limits(timeout_s=600, max_num_examples=10**9)
    evals = validate_at_sites(ctx, model=path, label="global", sites=sites, round=0,
                              limits=limits)
    evals.metrics        # {site: {"loss": 0.12}}: finite metrics of each valid answer
    evals.missing        # {site: why it has none}
    evals.aggregated()   # the metrics weighted by each site's num_examples

    matrix = cross_site_phase(ctx, global_model=path, source="final", round=5, limits=limits)

A ``validate`` task sends one model to the sites; each answers with metrics
and the number of examples it evaluated, no weights (docs/client-api.md). A
``submit_model`` task asks each site for its own local model. Both go
through the task board one at a time, as rounds do: the server daemon's
board holds one current task (a new scatter supersedes the last), so the
N + 1 models of a cross-site phase are evaluated in turn, each a forward
pass at every site. The sites' models are asked for first, before any
``validate`` task: a script that loads the model to evaluate into its own
network has not yet overwritten the model it is asked to submit.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal import checksum, evalmatrix
from shoal.arrays import (
    WrittenArrays,
    array_specs,
    check_compatible,
    check_finite,
    load_arrays,
    write_arrays,
)
from shoal.errors import ArrayFormatError, JobFailedError
from shoal.taskmeta import SUBMIT_MODEL, VALIDATE
from shoal.workflows.api import TaskResult, WorkflowContext
from shoal.workflows.metrics import finite_metrics, weighted_metrics
from shoal.workflows.results import check_num_examples
from shoal.workflows.store import atomic_write_bytes

__all__ = [
    "Evaluations",
    "Limits",
    "Submitted",
    "collect_local_models",
    "cross_site_phase",
    "sites_taking_part",
    "validate_at_sites",
]

#: Where a cross-site phase keeps the sites' local models, in the run folder.
LOCAL_MODELS_DIR = "cross_site"


@dataclass(frozen=True)
class Limits:
    """What bounds one evaluation task."""

    #: Seconds a task waits for answers, then goes on with what it has.
    timeout_s: float
    #: The most ``num_examples`` an answer may claim (as ``RoundParams``).
    max_num_examples: int


@dataclass(frozen=True)
class Evaluations:
    """The sites' answers to one ``validate`` task."""

    #: The model's name (``"global"`` or the site whose model it is).
    label: str
    #: Each valid answer (no arrays), by site.
    results: dict[str, TaskResult] = field(default_factory=dict)
    #: Each valid answer's finite metrics, by site.
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Sites asked that gave no valid answer, and why.
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def num_examples(self) -> int:
        return sum(r.num_examples for r in self.results.values())

    def aggregated(self, log: logging.Logger, round: int = 0) -> dict[str, float]:
        """Each metric's mean over the sites that reported it, weighted by ``num_examples``."""
        results = [self.results[s] for s in sorted(self.results)]
        return weighted_metrics(results, self.metrics, log=log, round=round)

    def cells(self) -> dict[str, dict[str, Any]]:
        """The matrix row of this model: ``{site: {"num_examples", "metrics"}}``."""
        return {
            s: {"num_examples": self.results[s].num_examples, "metrics": self.metrics[s]}
            for s in sorted(self.results)
        }


@dataclass(frozen=True)
class Submitted:
    """The sites' answers to one ``submit_model`` task."""

    #: Each site's local model, saved in the run folder.
    paths: dict[str, Path] = field(default_factory=dict)
    #: Their checksums (``shoal.checksum``), computed while saving them.
    checksums: dict[str, str] = field(default_factory=dict)
    #: Sites asked that gave no valid model, and why.
    missing: dict[str, str] = field(default_factory=dict)


def sites_taking_part(ctx: WorkflowContext) -> list[str]:
    """The job's sites, sorted; JobFailedError when fewer than ``min_clients``."""
    sites = sorted(ctx.comm.sites())
    min_clients = int(ctx.spec.min_clients)
    if len(sites) < min_clients:
        raise JobFailedError(
            f"only {len(sites)} site(s) take part ({', '.join(sites) or 'none'}), "
            f"min_clients={min_clients}"
        )
    return sites


def _no_answer(limits: Limits) -> str:
    return f"no answer within {limits.timeout_s:g} s (or the site left)"


def _task_meta(ctx: WorkflowContext, round: int, label: str) -> dict[str, Any]:
    meta = ctx.task_meta(current_round=round, model_owner=label)
    total = ctx.params.get("num_rounds")
    if isinstance(total, int) and not isinstance(total, bool):
        meta["total_rounds"] = total
    return meta


def _expected(
    log: logging.Logger,
    task: str,
    result: TaskResult,
    asked: Sequence[str],
    seen: set[str],
    round: int,
) -> bool:
    if result.site in asked and result.site not in seen and result.round == round:
        return True
    log.warning(
        "%s: ignoring unexpected result from %s (round %d)", task, result.site, result.round
    )
    return False


def validate_at_sites(
    ctx: WorkflowContext,
    *,
    model: Path,
    label: str,
    sites: Sequence[str],
    round: int,
    limits: Limits,
    model_checksum: str | None = None,
) -> Evaluations:
    """Send ``model`` to ``sites`` as a ``validate`` task and gather their metrics.

    An answer is refused (logged, and the site counted as missing) when it
    carries arrays, no metrics, or a ``num_examples`` out of ``[1,
    limits.max_num_examples]``; a metric that is not a finite float32 is
    dropped (``shoal.workflows.metrics``)."""
    log, comm = ctx.logger, ctx.comm
    asked = sorted(sites)
    task_id = comm.scatter(
        task=VALIDATE,
        round=round,
        weights_path=model,
        sites=asked,
        meta=_task_meta(ctx, round, label),
        weights_checksum=model_checksum or checksum.of_file(model),
    )
    log.info("validate: model %s sent to %d site(s): %s", label, len(asked), ", ".join(asked))
    comm.report(round=round, status="validating", model=label, sites=list(asked))
    evals = Evaluations(label=label)
    for result in comm.gather(task_id, timeout=limits.timeout_s):
        if not _expected(
            log, VALIDATE, result, asked, set(evals.results) | set(evals.missing), round
        ):
            continue
        site = result.site
        try:
            check_num_examples(result.num_examples, limits.max_num_examples)
            arrays = len(result.arrays()) + len(result.extras())
            if arrays:
                raise ArrayFormatError(
                    f"a {VALIDATE!r} result carries metrics, no weights; it has {arrays} "
                    "array(s) (does the site's script handle the task? docs/client-api.md)"
                )
            if not result.metrics:
                raise ArrayFormatError(f"a {VALIDATE!r} result must carry metrics")
        except ArrayFormatError as exc:
            evals.missing[site] = f"refused: {exc}"
            log.warning("validate %s: refused the result of %s: %s", label, site, exc)
            continue
        evals.metrics[site] = finite_metrics(result.metrics, source=site, log=log, round=round)
        evals.results[site] = TaskResult(
            site=site,
            task_id=result.task_id,
            round=result.round,
            num_examples=result.num_examples,
            metrics=evals.metrics[site],
            path=Path(),
        )
    for site in asked:
        if site not in evals.results and site not in evals.missing:
            evals.missing[site] = _no_answer(limits)
    return evals


def collect_local_models(
    ctx: WorkflowContext,
    *,
    model: Path,
    sites: Sequence[str],
    round: int,
    limits: Limits,
    folder: Path,
    model_checksum: str | None = None,
) -> Submitted:
    """Ask ``sites`` for their own local model (a ``submit_model`` task that
    carries ``model``, a starting point for a site that keeps none) and save
    each valid one as ``folder/<site>.safetensors``.

    A model is refused (logged, the site counted as missing) unless it has
    ``model``'s names, shapes and dtypes and is finite, and is sent whole
    (``params_type: full``): the other sites load it into the same network."""
    log, comm = ctx.logger, ctx.comm
    asked = sorted(sites)
    reference = array_specs(load_arrays(model, mmap=True))
    task_id = comm.scatter(
        task=SUBMIT_MODEL,
        round=round,
        weights_path=model,
        sites=asked,
        meta=_task_meta(ctx, round, evalmatrix.global_label(asked)),
        weights_checksum=model_checksum or checksum.of_file(model),
    )
    log.info("submit_model: asked %d site(s) for their local model", len(asked))
    comm.report(round=round, status="collecting local models", sites=list(asked))
    out = Submitted()
    for result in comm.gather(task_id, timeout=limits.timeout_s):
        if not _expected(
            log, SUBMIT_MODEL, result, asked, set(out.paths) | set(out.missing), round
        ):
            continue
        site = result.site
        try:
            saved = _save_local_model(result, reference, folder)
        except ArrayFormatError as exc:
            out.missing[site] = f"refused: {exc}"
            log.warning("submit_model: refused the model of %s: %s", site, exc)
            continue
        out.paths[site], out.checksums[site] = saved.path, saved.checksum
        log.info("submit_model: local model of %s saved", site)
    for site in asked:
        if site not in out.paths and site not in out.missing:
            out.missing[site] = _no_answer(limits)
    return out


def _save_local_model(
    result: TaskResult, reference: Mapping[str, tuple[str, tuple[int, ...]]], folder: Path
) -> WrittenArrays:
    if result.params_type != "full":
        raise ArrayFormatError(
            f"params_type is {result.params_type!r}: send the whole model ('full')"
        )
    arrays = result.arrays()
    check_compatible(reference, arrays)
    check_finite(arrays)
    # A copy: the runtime removes the result's file once the gather is over.
    return write_arrays(folder / f"{result.site}.safetensors", arrays)


def _write_matrix(run_dir: Path, doc: Mapping[str, Any]) -> None:
    data = json.dumps(doc, indent=1, allow_nan=False).encode("utf-8")
    atomic_write_bytes(run_dir / evalmatrix.FILE_NAME, data)


def cross_site_phase(
    ctx: WorkflowContext,
    *,
    global_model: Path,
    source: str,
    round: int,
    limits: Limits,
) -> dict[str, Any]:
    """Cross-site evaluation: every site's local model and ``global_model``
    evaluated at every site. Writes ``run/cross_site_eval.json``
    (``shoal.evalmatrix``) after each model and returns it.

    ``source`` says where the global model came from (``"initial"``,
    ``"final"``, ``"app/<file>"``). JobFailedError when fewer than the job's
    ``min_clients`` sites evaluated the global model."""
    log = ctx.logger
    sites = sites_taking_part(ctx)
    label = evalmatrix.global_label(sites)
    digest = checksum.of_file(global_model)
    started = time.monotonic()
    doc: dict[str, Any] = {
        "global_model": source,
        "models": [label],
        "sites": sites,
        "results": {},
        "missing": {},
        "not_submitted": {},
    }
    _write_matrix(ctx.run_dir, doc)
    submitted = collect_local_models(
        ctx,
        model=global_model,
        sites=sites,
        round=round,
        limits=limits,
        folder=ctx.run_dir / LOCAL_MODELS_DIR,
        model_checksum=digest,
    )
    doc["models"] = [label, *sorted(submitted.paths)]
    doc["not_submitted"] = submitted.missing
    _write_matrix(ctx.run_dir, doc)
    models: list[tuple[str, Path, str | None]] = [
        (label, global_model, digest),
        *((s, p, submitted.checksums[s]) for s, p in sorted(submitted.paths.items())),
    ]
    for name, path, known in models:
        evals = validate_at_sites(
            ctx,
            model=path,
            label=name,
            sites=sites,
            round=round,
            limits=limits,
            model_checksum=known,
        )
        doc["results"][name] = evals.cells()
        if evals.missing:
            doc["missing"][name] = evals.missing
        _write_matrix(ctx.run_dir, doc)
        log.info(
            "cross-site: model %s evaluated by %d/%d site(s)%s",
            name,
            len(evals.results),
            len(sites),
            "".join(f", {m}={v:.4g}" for m, v in evals.aggregated(log, round).items()),
        )
        if name == label:
            _require_quorum(ctx, evals, what="evaluated the global model")
    ctx.comm.report(
        round=round,
        status="cross_site_done",
        models=len(doc["models"]),
        sites=list(sites),
        duration_s=time.monotonic() - started,
    )
    log.info(
        "cross-site evaluation done: %d model(s) x %d site(s) in %.2fs, %s",
        len(doc["models"]),
        len(sites),
        time.monotonic() - started,
        evalmatrix.FILE_NAME,
    )
    return doc


def _require_quorum(ctx: WorkflowContext, evals: Evaluations, *, what: str) -> None:
    min_clients = int(ctx.spec.min_clients)
    if len(evals.results) >= min_clients:
        return
    missing = "; ".join(f"{s}: {why}" for s, why in sorted(evals.missing.items()))
    raise JobFailedError(
        f"only {len(evals.results)} of the required min_clients={min_clients} sites "
        f"{what} ({missing or 'no site asked'})"
    )
