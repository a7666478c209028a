"""The round driver: the loop, durability and reporting every round-based workflow shares.

A workflow is the driver plus its policies (``shoal.workflows.policies``): an
aggregator factory and a server update. FedAvg is the weighted mean and "the
aggregate is the new model"; another algorithm changes a policy, not the loop::

    run_rounds(ctx, params, Policies(aggregator=weighted_mean, update=my_update),
               workflow="mine")

Each round ``k`` (1-based) offers ``models/global_round_{k-1}.safetensors`` to
the selected sites as task ``train``, folds every valid result into the
round's aggregator as it arrives, and, once the gather is over and at least
``min_clients`` sites answered validly, hands the aggregate to the server
update, writes the update's state and the new global model, and offers the
model at once as the next round's task. Round ``k`` is then committed while
the sites download round ``k+1``: the model (and state) file is fsynced, the
server's ``evaluate`` hook runs, then the metrics line, the trackers' scalars
(TensorBoard, MLflow, W&B: ``shoal.observe.tracking``) and the checkpoint are written, in that order, and round models (and states)
older than the last ``keep_models`` are removed. The disk's flush is off the
rounds' critical path, and nothing is claimed before it is durable: a crash
before the checkpoint re-runs round ``k`` from round ``k-1``'s checkpoint,
with round ``k-1``'s state. A result whose arrays differ from the global
model's names/shapes/dtypes, hold NaN/Inf, or report ``num_examples <= 0``
or over ``max_num_examples`` is refused (logged; the site counts as not
answered). Metrics are kept finite (``shoal.workflows.metrics``). A run
restarted after a crash resumes after the last checkpointed round. With
``evaluate_after``, the final model then goes through a cross-site
evaluation phase (``shoal.workflows.evaluation``) before the sites are told
the job is over.

Arrays beside the weights (``FLModel.extras``) go down only when the
policies' ``task_extras`` gives some (or a ``model_out`` filter adds them):
the round's task is then a file of its own, ``run/published/round_NNNN``,
the model and those arrays together; otherwise it is the model file itself.
They reach the aggregator only when ``fold_extras`` is set. When the
runtime asks the workflow to stop (``ctx.stop_requested()``, its server is
stopping), the round in progress finishes, is checkpointed, and the run
raises ``WorkflowSuspended`` instead of offering the next round.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shoal.aggregation import Aggregator
from shoal.arrays import array_specs, check_compatible, check_finite, load_arrays, save_arrays
from shoal.client.model import FLModel
from shoal.errors import (
    ArrayFormatError,
    JobFailedError,
    JobValidationError,
    WorkflowSuspended,
)
from shoal.observe.tracking import Trackers, private_sites, workflow_trackers
from shoal.taskmeta import join_extras
from shoal.workflows.api import TaskResult, WorkflowContext
from shoal.workflows.evaluation import Limits, cross_site_phase
from shoal.workflows.hooks import load_attr
from shoal.workflows.metrics import finite_metrics, weighted_metrics
from shoal.workflows.params import param
from shoal.workflows.policies import Policies, ServerState, check_state, keep_aggregate
from shoal.workflows.results import (
    apply_filters,
    filter_result,
    server_filters,
    validate_result,
    without_arrays,
)
from shoal.workflows.servermodel import call_hook, initial_params, save_native, server_model_of
from shoal.workflows.store import RoundStore

__all__ = [
    "DEFAULT_MAX_NUM_EXAMPLES",
    "MAX_NUM_EXAMPLES_LIMIT",
    "RoundParams",
    "needs_initial_model",
    "run_rounds",
    "select_sites",
]

# Upper bounds of the numeric parameters: a number past them is a typo or an
# attack, and none may reach the job store (SQLite's INTEGER is 64-bit).
_MAX_ROUNDS = 1_000_000
_MAX_ROUND_TIMEOUT_S = 30 * 24 * 3600.0
_MAX_SEED = 2**63 - 1

#: Default of ``max_num_examples``; see RoundParams.
DEFAULT_MAX_NUM_EXAMPLES = 10**9
#: Its upper limit: a weight is then exact as a float64.
MAX_NUM_EXAMPLES_LIMIT = 2**53


@dataclass(frozen=True)
class RoundParams:
    """The driver's ``workflow:`` parameters; a workflow's own params class
    adds its fields to these (one level of inheritance)."""

    #: Rounds to run (>= 1).
    num_rounds: int = param(doc="rounds to run", lo=1, hi=_MAX_ROUNDS)
    #: Seconds a round waits for results before going on with what it has.
    round_timeout_s: float = param(
        600.0,
        doc="seconds a round waits for results; then it goes on with what it has",
        lo=0,
        lo_open=True,
        hi=_MAX_ROUND_TIMEOUT_S,
        text=f"> 0 and <= {_MAX_ROUND_TIMEOUT_S:.0f}",
    )
    #: Fraction of the job's sites asked each round (0 < f <= 1); at least
    #: ``min_clients`` sites are always asked.
    sample_fraction: float = param(
        1.0, doc="fraction of the sites asked each round", lo=0, lo_open=True, hi=1
    )
    #: Seed of the per-round site sampling (same seed, same choice of sites).
    seed: int = param(0, doc="seed of the per-round site sampling", lo=0, hi=_MAX_SEED)
    #: Round models kept: the last ``keep_models`` ``global_round_NNNN``
    #: files (the initial and the final model always stay); 0 keeps them all.
    keep_models: int = param(
        3,
        doc="round models kept (0: all)",
        lo=0,
        hi=_MAX_ROUNDS,
        note=" (0: keep every round's model)",
    )
    #: The most ``num_examples`` (a result's weight) a site's result may
    #: claim; a result claiming more is refused, as one claiming <= 0 is.
    #: Refused, not clipped: clipping would hand an over-claiming site the
    #: largest weight there is. 10**9 is ~800 times ImageNet-1k (1.28e6
    #: images) at one site, and a million sites at the bound still total
    #: 1e15 < 2**53, exact as a float64. It bounds one site's weight, it
    #: does not make FedAvg robust: a site at the bound still outweighs one
    #: with 1,000 examples a million times.
    max_num_examples: int = param(
        DEFAULT_MAX_NUM_EXAMPLES,
        doc="the most num_examples a result may claim",
        lo=1,
        hi=MAX_NUM_EXAMPLES_LIMIT,
        text="[1, 2**53]",
    )
    #: After the last round, a cross-site evaluation phase: each site's local
    #: model and the final global model evaluated at every site
    #: (``shoal.workflows.evaluation``, ``run/cross_site_eval.json``).
    evaluate_after: bool = param(
        False, doc="after the last round, evaluate every site's model and the global one everywhere"
    )


def needs_initial_model(workflow: str) -> Callable[[Any], None]:
    """A registry ``check_spec``: the job has ``server.model`` or
    ``server.initial_weights`` to build the initial global model from (and,
    with ``evaluate_after``, no ``model_out`` filter, which its phase does not run)."""

    def check(spec: Any) -> None:
        server = spec.server
        if not server.model and not server.initial_weights:
            raise JobValidationError(
                f"job.yml: server: {workflow} needs server.model or server.initial_weights "
                "to build the initial global model"
            )
        filters = getattr(spec, "filters", None) or {}
        if spec.workflow.params.get("evaluate_after") is True and filters.get("model_out"):
            # The phase sends the final model and the sites' own models as
            # they are; a filter meant to change what leaves the server would not run.
            raise JobValidationError(
                "job.yml: workflow.evaluate_after: the cross-site phase does not run "
                "server-side filters; it cannot be combined with filters.model_out"
            )

    return check


def select_sites(
    sites: Sequence[str], round: int, *, fraction: float, min_clients: int, seed: int
) -> list[str]:
    """The sites asked in ``round``: all of them, or ``ceil(fraction * n)`` (at
    least ``min_clients``) drawn with an RNG seeded by ``(seed, round)``, so a
    resumed run asks the same sites as an uninterrupted one."""
    ordered = sorted(sites)
    if fraction >= 1.0:
        return ordered
    count = min(len(ordered), max(min_clients, math.ceil(fraction * len(ordered))))
    rng = np.random.default_rng([seed, round])
    picked = sorted(int(i) for i in rng.choice(len(ordered), size=count, replace=False))
    return [ordered[i] for i in picked]


def _unshared(models: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray] | None:
    """The model in ``models`` (taken out of it), if nothing else refers to it
    or to its arrays any more: a server hook (evaluate, a model adapter) may
    have kept it, or a view of it, and must never see it change."""
    params = models.pop() if models else None
    if params is None or not hasattr(sys, "getrefcount"):
        return None
    # The dict: `params` and getrefcount's argument. Each array: the dict's
    # slot, `arr` and the argument.
    if sys.getrefcount(params) > 2:
        return None
    for arr in params.values():
        # A view's memory is its base's owner's: a framework model's tensors
        # (torch's get_weights hands out views of the server model).
        if sys.getrefcount(arr) > 3 or arr.base is not None:
            return None
    return params


def run_rounds(
    ctx: WorkflowContext, params: RoundParams, policies: Policies, *, workflow: str
) -> None:
    """Run rounds to ``params.num_rounds`` (or resume after the last
    checkpointed one) with ``policies``; ``workflow`` names it in messages."""
    spec, log, comm = ctx.spec, ctx.logger, ctx.comm
    min_clients = int(spec.min_clients)
    total = params.num_rounds
    store = RoundStore(ctx.run_dir)
    sites = sorted(comm.sites())
    if len(sites) < min_clients:
        raise JobFailedError(
            f"only {len(sites)} site(s) take part ({', '.join(sites) or 'none'}), "
            f"min_clients={min_clients}"
        )
    server_model = server_model_of(ctx)
    state: ServerState = {}
    ckpt = store.load_checkpoint()
    if ckpt is not None:
        global_params = store.load_model(ckpt)
        state = store.load_state(ckpt)
        start = ckpt.round + 1
        log.info(
            "resuming job %s after round %d of %d (%s)", ctx.job_id, ckpt.round, total, ckpt.model
        )
    else:
        global_params = initial_params(ctx, server_model, workflow)
        store.save_checkpoint(0, store.write_model(0, global_params))
        start = 1
    store.trim_metrics(start - 1)
    reference = array_specs(global_params)
    hook = spec.server.evaluate
    evaluate = load_attr(ctx.app_dir, hook) if hook else None
    # One slot the rounds take the global model out of and put the next one
    # into: no other reference keeps a model a round could reuse the memory of.
    models = [global_params]
    del global_params
    try:
        with workflow_trackers(ctx, store.tensorboard_dir) as tb:
            rounds = _Rounds(
                ctx=ctx,
                params=params,
                policies=policies,
                store=store,
                tb=tb,
                evaluate=evaluate,
                sites=sites,
                reference=reference,
            )
            last = start - 1
            try:
                for k in range(start, total + 1):
                    reason = policies.stop_before(k, state) if policies.stop_before else None
                    if reason:
                        # A budget spent (DP's max_epsilon): the job ends with
                        # the last completed round's model, completed.
                        log.warning("job %s: stopping before round %d: %s", ctx.job_id, k, reason)
                        comm.report(
                            round=k - 1, total_rounds=total, status="stopped", message=reason
                        )
                        break
                    try:
                        state = rounds.run(k, models, state)
                    except JobFailedError as exc:
                        if not ctx.stop_requested():
                            raise
                        # Sites stopping with the server cost round k its
                        # quorum: not the job's failure. Round k-1 is
                        # checkpointed (its commit ran once k's task was out).
                        log.warning("round %d could not finish while stopping: %s", k, exc)
                        raise WorkflowSuspended(k - 1) from None
                    last = k
                    if k < total and ctx.stop_requested():
                        # Round k is gathered and its model written: the
                        # commit below checkpoints it; round k+1 is never
                        # offered. The job resumes from there.
                        raise WorkflowSuspended(k)
            finally:
                # The last round's commit, or a completed round's whose
                # successor failed: what finished is recorded.
                rounds.commit_pending()
            final = store.write_model(last, models[0], final=True)
            log.info("job %s: final global model %s", ctx.job_id, final)
            if server_model.adapter is not None and server_model.adapter.suffix != ".safetensors":
                save_native(store, server_model, models[0])
                tb.log_model(store.final_path(server_model.adapter.suffix))
            tb.log_model(final)
            if params.evaluate_after:
                # Re-run whole after a restart: it keeps no checkpoint of its own.
                limits = Limits(
                    timeout_s=params.round_timeout_s, max_num_examples=params.max_num_examples
                )
                cross_site_phase(ctx, global_model=final, source="final", round=last, limits=limits)
    finally:
        store.discard_spare()
        comm.finish()


class _OnDisk(Mapping[str, np.ndarray]):
    """The model the round's sites trained from, still on disk: mapped (not
    read) on first use, so an update that never looks at it (FedAvg's)
    costs nothing."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._arrays: dict[str, np.ndarray] | None = None

    def _load(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = load_arrays(self._path, mmap=True)
        return self._arrays

    def __getitem__(self, name: str) -> np.ndarray:
        return self._load()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


@dataclass(frozen=True)
class _Gathered:
    """A round's valid results by site, and why the refused ones were refused."""

    accepted: dict[str, TaskResult]
    refused: dict[str, str]
    #: Site -> the size of the result it sent (accepted or not).
    received_bytes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Sent:
    """A round's task: its id, and its payload's size times the sites it went to."""

    task_id: str
    bytes_sent: int


@dataclass(frozen=True)
class _Outcome:
    """What a round's commit records, once its model is written."""

    round: int
    selected: list[str]
    results: list[TaskResult]
    model: dict[str, np.ndarray]
    model_path: Path
    state_path: Path | None
    started_wall: float
    duration: float
    bytes_sent: int
    bytes_received: int
    #: The workflow's own figures for the round (``Policies.round_metrics``).
    workflow_metrics: dict[str, float]


class _Rounds:
    """The rounds of one run: the steps of a round, and the commit each
    round leaves for the next to run once its task is out."""

    def __init__(
        self,
        *,
        ctx: WorkflowContext,
        params: RoundParams,
        policies: Policies,
        store: RoundStore,
        tb: Trackers,
        evaluate: Any,
        sites: Sequence[str],
        reference: Mapping[str, tuple[str, tuple[int, ...]]],
    ) -> None:
        self.ctx, self.params, self.policies, self.store = ctx, params, policies, store
        self.tb, self.evaluate, self.sites, self.reference = tb, evaluate, sites, reference
        self.log = ctx.logger
        self.min_clients = int(ctx.spec.min_clients)
        self.filters = server_filters(ctx)
        #: The last round's commit. A list it pops from, so no reference to
        #: that round's model outlives it.
        self.pending: list[Callable[[], None]] = []

    def commit_pending(self) -> None:
        while self.pending:
            self.pending.pop()()

    def run(self, k: int, models: list[dict[str, np.ndarray]], state: ServerState) -> ServerState:
        """Round ``k``: takes the global model out of ``models``, puts the new
        one in; returns the server update's new state."""
        p, comm, total = self.params, self.ctx.comm, self.params.num_rounds
        selected = select_sites(
            self.sites, k, fraction=p.sample_fraction, min_clients=self.min_clients, seed=p.seed
        )
        started = time.monotonic()
        started_wall = time.time()
        sent = self._scatter(k, selected, state)
        # The sites are downloading: commit the previous round meanwhile.
        self.commit_pending()
        comm.report(round=k, total_rounds=total, status="training", sites=list(selected))
        # The previous global model is on disk: its memory may become the
        # aggregate's once the previous round's commit is done with it, so a
        # round holds one model, not two.
        aggregator = self.policies.aggregator(_unshared(models))
        gathered = self._gather(k, sent.task_id, selected, aggregator, state)
        self._require_quorum(k, selected, gathered)
        # The gather is complete: only now does the aggregate become the
        # global model. Written (and checksummed) now, so the next round can
        # offer it; made durable and recorded by the commit, which the next
        # round runs once its task is out.
        new_global, state = self._update(k, aggregator, state)
        state_path = self.store.write_state(k, state, durable=False)
        model_path = self.store.write_model(k, new_global, durable=False)
        outcome = _Outcome(
            round=k,
            selected=selected,
            results=[gathered.accepted[s] for s in sorted(gathered.accepted)],
            model=new_global,
            model_path=model_path,
            state_path=state_path,
            started_wall=started_wall,
            duration=time.monotonic() - started,
            bytes_sent=sent.bytes_sent,
            bytes_received=sum(gathered.received_bytes.values()),
            workflow_metrics=(
                self.policies.round_metrics(state) if self.policies.round_metrics else {}
            ),
        )
        self.pending.append(functools.partial(self._commit, outcome))
        models.append(new_global)
        return state

    def _scatter(self, k: int, selected: list[str], state: ServerState) -> _Sent:
        store, total = self.store, self.params.num_rounds
        weights_path = store.model_path(k - 1)
        checksum: str | None = None
        extras = self._task_extras(k, state)
        if self.filters.get("model_out") or extras:
            weights_path = self._publish(k, weights_path, extras)
        else:
            # The model file itself: no copy, and its checksum is known.
            checksum = store.model_checksum(weights_path)
        task_id = self.ctx.comm.scatter(
            task="train",
            round=k,
            weights_path=weights_path,
            sites=selected,
            meta=self.ctx.task_meta(**self.policies.task_meta, current_round=k, total_rounds=total),
            weights_checksum=checksum,
        )
        self.log.info(
            "round %d/%d: task %s sent to %d site(s): %s",
            k,
            total,
            task_id,
            len(selected),
            ", ".join(selected),
        )
        try:
            size = weights_path.stat().st_size
        except OSError:
            size = 0
        return _Sent(task_id, size * len(selected))

    def _task_extras(self, k: int, state: ServerState) -> Mapping[str, np.ndarray]:
        """The arrays the workflow sends beside round ``k``'s model ({} if none)."""
        make = self.policies.task_extras
        if make is None:
            return {}
        extras = make(state)
        try:
            check_finite(extras)
        except ArrayFormatError as exc:
            raise JobFailedError(f"round {k}: the task's extras are refused: {exc}") from None
        return extras

    def _publish(self, k: int, model_path: Path, extras: Mapping[str, np.ndarray]) -> Path:
        """Round ``k``'s task, the model and ``extras``, through the
        ``model_out`` filters if any, into a file of its own (the global
        model on disk stays what the rounds computed)."""
        model = FLModel(
            params=load_arrays(model_path, mmap=True),
            extras=extras,
            current_round=k,
            total_rounds=self.params.num_rounds,
            task="train",
        )
        chain = self.filters.get("model_out")
        out = (
            apply_filters(chain, model, job_id=self.ctx.job_id, site="*", round=k)
            if chain
            else model
        )
        folder = self.store.run_dir / "published"
        target = folder / f"round_{k:04d}.safetensors"
        save_arrays(target, join_extras(out.params, out.extras), durable=False)
        # Only this round's task is offered now; a transfer of an older one
        # already under way keeps its open file.
        for old in folder.glob("round_*.safetensors"):
            if old != target:
                old.unlink(missing_ok=True)
        return target

    def _filter_result(self, k: int, result: TaskResult) -> TaskResult:
        """``result`` through the ``result_in`` filters, as an in-memory result."""
        return filter_result(
            self.filters["result_in"],
            result,
            job_id=self.ctx.job_id,
            round=k,
            total_rounds=self.params.num_rounds,
            reference=_OnDisk(self.store.model_path(k - 1)),
        )

    def _gather(
        self,
        k: int,
        task_id: str,
        selected: list[str],
        aggregator: Aggregator,
        state: ServerState,
    ) -> _Gathered:
        log = self.log
        gathered = _Gathered(accepted={}, refused={})
        for result in self.ctx.comm.gather(task_id, timeout=self.params.round_timeout_s):
            site = result.site
            if site not in selected or site in gathered.accepted or result.round != k:
                log.warning(
                    "round %d: ignoring unexpected result from %s (round %d)",
                    k,
                    site,
                    result.round,
                )
                continue
            gathered.received_bytes[site] = result.payload_bytes()
            if self.filters.get("result_in"):
                result = self._filter_result(k, result)
            if not self._fold(k, result, aggregator, gathered, state):
                continue
            gathered.accepted[site] = without_arrays(result)
            if result.path.name:
                # Folded in, its arrays dropped: the new model is written over it.
                self.store.adopt_spare(result.path)
            log.info("round %d: result from %s (%d examples)", k, site, result.num_examples)
        return gathered

    def _fold(
        self,
        k: int,
        result: TaskResult,
        aggregator: Aggregator,
        gathered: _Gathered,
        state: ServerState,
    ) -> bool:
        arrays: dict[str, np.ndarray] | None = None
        try:
            arrays = validate_result(
                result,
                self.reference,
                max_num_examples=self.params.max_num_examples,
                global_model=functools.partial(_OnDisk, self.store.model_path(k - 1)),
            )
            if self.policies.fold_extras:
                extras = result.extras()
                check_finite(extras)
                arrays = join_extras(arrays, extras)
            if self.policies.prepare_result is not None:
                old = _OnDisk(self.store.model_path(k - 1))
                arrays = self.policies.prepare_result(arrays, old, state)
            aggregator.add(arrays, weight=result.num_examples)
        except ArrayFormatError as exc:
            gathered.refused[result.site] = str(exc)
            self.log.warning("round %d: refused the result of %s: %s", k, result.site, exc)
            return False
        finally:
            # Unmap this result now, not when the next one is already mapped:
            # memory stays at the running mean plus one result.
            arrays = None
        return True

    def _require_quorum(self, k: int, selected: list[str], gathered: _Gathered) -> None:
        accepted, refused = gathered.accepted, gathered.refused
        if len(accepted) >= self.min_clients:
            return
        missing = [
            f"{s} ({refused[s]})" if s in refused else s for s in selected if s not in accepted
        ]
        raise JobFailedError(
            f"round {k}: only {len(accepted)} of the required min_clients={self.min_clients} "
            f"sites returned a valid result (missing: {', '.join(missing) or 'none'})"
        )

    def _update(
        self, k: int, aggregator: Aggregator, state: ServerState
    ) -> tuple[dict[str, np.ndarray], ServerState]:
        try:
            aggregate = aggregator.result()
        except ArrayFormatError as exc:
            # Finite results give a finite mean; never offer a model that is not.
            raise JobFailedError(f"round {k}: the aggregated model is refused: {exc}") from None
        step = self.policies.update(_OnDisk(self.store.model_path(k - 1)), aggregate, state)
        new_global = step.params
        if self.policies.update is not keep_aggregate or self.policies.fold_extras:
            # Another update may have overflowed, or changed the model's form
            # (an aggregate with extras in it is not a model).
            try:
                check_compatible(self.reference, new_global)
                check_finite(new_global)
            except ArrayFormatError as exc:
                raise JobFailedError(
                    f"round {k}: the server update's model is refused: {exc}"
                ) from None
        return new_global, check_state(step.state)

    def _commit(self, o: _Outcome) -> None:
        store, k = self.store, o.round
        store.sync_model(o.model_path)
        if o.state_path is not None:
            store.sync_state(o.state_path)
        server_metrics = {**self._evaluate(o), **o.workflow_metrics}
        num_examples = sum(r.num_examples for r in o.results)
        accepted = {r.site for r in o.results}
        aggregated = self._record(o, server_metrics, num_examples)
        if o.state_path is None:
            store.save_checkpoint(k, o.model_path)
        else:
            store.save_checkpoint(k, o.model_path, o.state_path)
        if self.params.keep_models:
            store.prune_models(keep=self.params.keep_models, latest=k)
        self.log.info(
            "round %d/%d done: %d/%d site(s), %d examples, %.2fs%s",
            k,
            self.params.num_rounds,
            len(accepted),
            len(o.selected),
            num_examples,
            o.duration,
            "".join(f", {m}={v:.4g}" for m, v in server_metrics.items()),
        )
        self.ctx.comm.report(
            round=k,
            total_rounds=self.params.num_rounds,
            status="round_done",
            num_examples=num_examples,
            sites={s: ("ok" if s in accepted else "missing") for s in o.selected},
            metrics=server_metrics or aggregated,
            duration_s=o.duration,
        )

    def _evaluate(self, o: _Outcome) -> dict[str, float]:
        if self.evaluate is None:
            return {}
        hook = self.ctx.spec.server.evaluate
        raw = call_hook("evaluate", hook, self.evaluate, o.model, o.round)
        if raw is not None and not isinstance(raw, Mapping):
            raise JobFailedError(f"server.evaluate hook {hook!r} must return a dict of numbers")
        return finite_metrics(raw, source=f"server.evaluate {hook!r}", log=self.log, round=o.round)

    def _record(
        self, o: _Outcome, server_metrics: dict[str, float], num_examples: int
    ) -> dict[str, float]:
        """Writes the round's metrics line and TensorBoard scalars; returns
        the sites' metrics aggregated."""
        log, k = self.log, o.round
        site_metrics = {
            r.site: finite_metrics(r.metrics, source=r.site, log=log, round=k) for r in o.results
        }
        aggregated = weighted_metrics(o.results, site_metrics, log=log, round=k)
        accepted = {r.site for r in o.results}
        self.store.append_metrics(
            {
                "round": k,
                "started": round(o.started_wall, 3),
                "num_examples": num_examples,
                "sites": site_metrics,
                "aggregated": aggregated,
                "server": server_metrics,
                "duration_s": round(o.duration, 3),
                "missing": [s for s in o.selected if s not in accepted],
                "bytes_sent": o.bytes_sent,
                "bytes_received": o.bytes_received,
            }
        )
        scalars = {f"server/{m}": v for m, v in server_metrics.items()}
        scalars.update({f"aggregated/{m}": v for m, v in aggregated.items()})
        for site, metrics in site_metrics.items():
            scalars.update({f"sites/{site}/{m}": v for m, v in metrics.items()})
        scalars["round/num_examples"] = float(num_examples)
        scalars["round/duration_s"] = o.duration
        self.tb.add_scalars(scalars, step=k, private=private_sites(o.results))
        return aggregated
