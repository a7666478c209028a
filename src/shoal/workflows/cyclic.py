"""Cyclic weight transfer: the model visits the sites in turn.

job.yml::

    workflow:
      name: cyclic
      num_rounds: 5          # passes over the sites
      order: shuffled        # or fixed (by name); shuffled is seeded by seed and the round
      seed: 0

Each round ``k`` takes the sites (all of them, or a seeded sample with
``sample_fraction``) in order, fixed or shuffled per round, and sends each
in turn a ``train`` task carrying the model the previous site returned (the
first gets round ``k - 1``'s model). A site's result is checked as the round
driver checks one (names, shapes and dtypes of the model, finite, ``0 <
num_examples <= max_num_examples``; a ``diff`` is added to the model it was
sent); a site that is refused or does not answer within ``round_timeout_s``
is skipped with a log line and the next one gets the same model. The model
after the last visit is round ``k``'s model.

Durability and reporting are the driver's pieces (``RoundStore``): after
each round the model is written, ``server.evaluate`` runs, the metrics line
(each site's metrics, their mean weighted by ``num_examples``, the visiting
order, who was skipped), TensorBoard scalars and the checkpoint follow, and
a restart resumes after the last checkpointed round (a round cut short is
run again whole, in the same order). Fewer than ``min_clients`` valid visits
in a round fail the job. The sites' results are never averaged, so there is
no aggregator: the server holds one model at a time.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shoal.arrays import array_specs, load_arrays, write_arrays
from shoal.errors import ArrayFormatError, JobFailedError
from shoal.observe.tracking import Trackers, private_sites, workflow_trackers
from shoal.taskmeta import TRAIN
from shoal.workflows.api import TaskResult, WorkflowContext
from shoal.workflows.driver import (
    RoundParams,
    needs_initial_model,
    select_sites,
)
from shoal.workflows.evaluate import no_server_filters
from shoal.workflows.evaluation import Limits, cross_site_phase, sites_taking_part
from shoal.workflows.hooks import load_attr
from shoal.workflows.metrics import finite_metrics, weighted_metrics
from shoal.workflows.params import param, parser
from shoal.workflows.results import validate_result
from shoal.workflows.servermodel import call_hook, initial_params, save_native, server_model_of
from shoal.workflows.store import RoundStore

__all__ = ["CyclicParams", "check_spec", "parse_params", "run", "visit_order"]

#: The model between two visits, in ``models/``: hidden, so a download leaves it out.
_VISIT_FILE = ".visit.safetensors"


@dataclass(frozen=True)
class CyclicParams(RoundParams):
    """The round driver's parameters (``round_timeout_s`` bounds each visit),
    and the order the sites are visited in."""

    #: ``fixed``: by name, every round; ``shuffled``: a new order each round,
    #: drawn with ``seed`` and the round (the same after a resume).
    order: str = param(
        "fixed",
        doc="the order of the visits: fixed (by name) or shuffled each round",
        choices=("fixed", "shuffled"),
    )


#: Raw ``workflow:`` params -> CyclicParams; JobValidationError names the field.
parse_params = parser(CyclicParams, workflow="cyclic")


def check_spec(spec: Any) -> None:
    """The initial model is given; no server-side filters, which cyclic does not run."""
    needs_initial_model("cyclic")(spec)
    no_server_filters("cyclic", spec)


def visit_order(
    sites: Sequence[str], round: int, params: CyclicParams, *, min_clients: int
) -> list[str]:
    """The sites round ``round`` visits, in order: those ``select_sites`` picks,
    by name or shuffled with an RNG seeded by ``(seed, round)``."""
    picked = select_sites(
        sites, round, fraction=params.sample_fraction, min_clients=min_clients, seed=params.seed
    )
    if params.order == "fixed":
        return picked
    # A stream of its own: the sampling above draws from (seed, round).
    rng = np.random.default_rng([params.seed, round, 1])
    return [picked[int(i)] for i in rng.permutation(len(picked))]


@dataclass(frozen=True)
class _Visits:
    """What one round's visits left: the model after the last valid one."""

    model: Path
    accepted: list[TaskResult]
    skipped: dict[str, str]


def run(ctx: WorkflowContext) -> None:
    """Run cyclic weight transfer to the end (or resume it); see the module docstring."""
    p = parse_params(ctx.params)
    log, comm = ctx.logger, ctx.comm
    store = RoundStore(ctx.run_dir)
    try:
        sites = sites_taking_part(ctx)
        server_model = server_model_of(ctx)
        ckpt = store.load_checkpoint()
        if ckpt is not None:
            model = store.load_model(ckpt)
            start = ckpt.round + 1
            log.info("resuming job %s after round %d of %d", ctx.job_id, ckpt.round, p.num_rounds)
        else:
            model = initial_params(ctx, server_model, "cyclic")
            store.save_checkpoint(0, store.write_model(0, model))
            start = 1
        store.trim_metrics(start - 1)
        cycle = _Cycle(ctx, p, store, sites, array_specs(model))
        del model
        with workflow_trackers(ctx, store.tensorboard_dir) as tb:
            for k in range(start, p.num_rounds + 1):
                cycle.round(k, tb)
            last = load_arrays(store.model_path(p.num_rounds), mmap=False)
            final = store.write_model(p.num_rounds, last, final=True)
            log.info("job %s: final model %s", ctx.job_id, final)
            if server_model.adapter is not None and server_model.adapter.suffix != ".safetensors":
                save_native(store, server_model, last)
                tb.log_model(store.final_path(server_model.adapter.suffix))
            tb.log_model(final)
            del last
            if p.evaluate_after:
                limits = Limits(timeout_s=p.round_timeout_s, max_num_examples=p.max_num_examples)
                cross_site_phase(
                    ctx, global_model=final, source="final", round=p.num_rounds, limits=limits
                )
    finally:
        (store.models_dir / _VISIT_FILE).unlink(missing_ok=True)
        comm.finish()


class _Cycle:
    """The rounds of one run."""

    def __init__(
        self,
        ctx: WorkflowContext,
        params: CyclicParams,
        store: RoundStore,
        sites: list[str],
        reference: Mapping[str, tuple[str, tuple[int, ...]]],
    ) -> None:
        self.ctx, self.params, self.store, self.sites = ctx, params, store, sites
        self.reference = reference
        self.log = ctx.logger
        self.min_clients = int(ctx.spec.min_clients)
        hook = ctx.spec.server.evaluate
        self.evaluate: Callable[..., Any] | None = load_attr(ctx.app_dir, hook) if hook else None

    def round(self, k: int, tb: Trackers) -> None:
        p, store = self.params, self.store
        order = visit_order(self.sites, k, p, min_clients=self.min_clients)
        self.log.info("round %d/%d: visiting %s", k, p.num_rounds, " -> ".join(order))
        started, started_wall = time.monotonic(), time.time()
        visits = self._visit(k, order)
        if len(visits.accepted) < self.min_clients:
            missing = ", ".join(f"{s} ({why})" for s, why in visits.skipped.items())
            raise JobFailedError(
                f"round {k}: only {len(visits.accepted)} of the required "
                f"min_clients={self.min_clients} sites returned a valid result "
                f"(skipped: {missing or 'none'})"
            )
        # In memory, as the driver hands it: an evaluate hook may keep it, or write to it.
        model = load_arrays(visits.model, mmap=False)
        model_path = store.write_model(k, model)
        server = self._evaluate(model, k)
        del model
        duration = time.monotonic() - started
        site_metrics = {
            r.site: finite_metrics(r.metrics, source=r.site, log=self.log, round=k)
            for r in visits.accepted
        }
        aggregated = weighted_metrics(visits.accepted, site_metrics, log=self.log, round=k)
        num_examples = sum(r.num_examples for r in visits.accepted)
        store.append_metrics(
            {
                "round": k,
                "started": round(started_wall, 3),
                "num_examples": num_examples,
                "sites": site_metrics,
                "aggregated": aggregated,
                "server": server,
                "duration_s": round(duration, 3),
                "missing": list(visits.skipped),
                "order": order,
            }
        )
        scalars = {f"server/{m}": v for m, v in server.items()}
        scalars.update({f"aggregated/{m}": v for m, v in aggregated.items()})
        for site, metrics in site_metrics.items():
            scalars.update({f"sites/{site}/{m}": v for m, v in metrics.items()})
        scalars["round/num_examples"] = float(num_examples)
        scalars["round/duration_s"] = duration
        tb.add_scalars(scalars, step=k, private=private_sites(visits.accepted))
        store.save_checkpoint(k, model_path)
        if p.keep_models:
            store.prune_models(keep=p.keep_models, latest=k)
        self.log.info(
            "round %d/%d done: %d/%d site(s), %d examples, %.2fs%s",
            k,
            p.num_rounds,
            len(visits.accepted),
            len(order),
            num_examples,
            duration,
            "".join(f", {m}={v:.4g}" for m, v in server.items()),
        )
        self.ctx.comm.report(
            round=k,
            total_rounds=p.num_rounds,
            status="round_done",
            num_examples=num_examples,
            sites={s: ("missing" if s in visits.skipped else "ok") for s in order},
            metrics=server or aggregated,
            duration_s=duration,
        )

    def _visit(self, k: int, order: list[str]) -> _Visits:
        """Round ``k``'s visits, one site after another."""
        p, store, comm, log = self.params, self.store, self.ctx.comm, self.log
        current = store.model_path(k - 1)
        digest = store.model_checksum(current)
        visit_file = store.models_dir / _VISIT_FILE
        accepted: list[TaskResult] = []
        skipped: dict[str, str] = {}
        for i, site in enumerate(order, 1):
            task_id = comm.scatter(
                task=TRAIN,
                round=k,
                weights_path=current,
                sites=[site],
                meta=self.ctx.task_meta(
                    current_round=k, total_rounds=p.num_rounds, visit=i, visits=len(order)
                ),
                weights_checksum=digest,
            )
            comm.report(
                round=k, total_rounds=p.num_rounds, status="training", sites=[site], visit=i
            )
            answered = False
            for result in comm.gather(task_id, timeout=p.round_timeout_s):
                if result.site != site or result.round != k or answered:
                    log.warning(
                        "round %d: ignoring unexpected result from %s (round %d)",
                        k,
                        result.site,
                        result.round,
                    )
                    continue
                answered = True
                try:
                    arrays = validate_result(
                        result,
                        self.reference,
                        max_num_examples=p.max_num_examples,
                        global_model=functools.partial(load_arrays, current, mmap=True),
                    )
                    # Over the last visit's file, whose task is over: renamed
                    # into place, so a reader of the old one keeps it whole.
                    digest = write_arrays(visit_file, arrays, durable=False).checksum
                except ArrayFormatError as exc:
                    skipped[site] = f"refused: {exc}"
                    log.warning("round %d: refused the result of %s, skipped: %s", k, site, exc)
                    continue
                finally:
                    arrays = {}
                current = visit_file
                accepted.append(_without_arrays(result))
                log.info(
                    "round %d: visit %d/%d, %s trained on %d examples",
                    k,
                    i,
                    len(order),
                    site,
                    result.num_examples,
                )
            if not answered:
                skipped[site] = f"no answer within {p.round_timeout_s:g} s (or the site left)"
                log.warning("round %d: %s skipped: %s", k, site, skipped[site])
        return _Visits(model=current, accepted=accepted, skipped=skipped)

    def _evaluate(self, model: Mapping[str, np.ndarray], k: int) -> dict[str, float]:
        if self.evaluate is None:
            return {}
        hook = self.ctx.spec.server.evaluate
        raw = call_hook("evaluate", hook, self.evaluate, model, k)
        if raw is not None and not isinstance(raw, Mapping):
            raise JobFailedError(f"server.evaluate hook {hook!r} must return a dict of numbers")
        return finite_metrics(raw, source=f"server.evaluate {hook!r}", log=self.log, round=k)


def _without_arrays(result: TaskResult) -> TaskResult:
    return TaskResult(
        site=result.site,
        task_id=result.task_id,
        round=result.round,
        num_examples=result.num_examples,
        metrics=dict(result.metrics),
        path=Path(),
    )
