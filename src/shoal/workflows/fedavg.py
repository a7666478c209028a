"""Federated averaging: scatter the global model, gather, weighted-average.

Each round ``k`` (1-based) offers ``models/global_round_{k-1}.safetensors`` to
the selected sites as task ``train``, folds every valid result into an
incremental weighted mean (weight: the site's ``num_examples``) as it arrives,
and, once the gather is over and at least ``min_clients`` sites answered
validly, writes the mean as the new global model and offers it at once as the
next round's task. Round ``k`` is then committed while the sites download
round ``k+1``: the model file is fsynced, the server's ``evaluate`` hook runs,
then the metrics line, TensorBoard scalars and the checkpoint are written, in
that order, and round models older than the last ``keep_models`` are removed. The disk's flush is off the rounds' critical path, and nothing is
claimed before it is durable: a crash before the checkpoint re-runs round
``k`` from round ``k-1``'s checkpoint. A result whose arrays differ from the global
model's names/shapes/dtypes, hold NaN/Inf, or report ``num_examples <= 0`` or
over ``max_num_examples`` is refused (logged; the site counts as not
answered). A metric that is not a finite number within float32's range (what
TensorBoard stores) is dropped with a warning naming the site and the metric,
never the job: every number written as JSON or to TensorBoard is finite. A
run restarted after a crash resumes after the last checkpointed round.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shoal.aggregation import WeightedMean
from shoal.arrays import array_specs, check_compatible, check_finite
from shoal.errors import ArrayFormatError, JobFailedError, JobValidationError, ShoalError
from shoal.tensorboard import ScalarWriter
from shoal.workflows.api import TaskResult, WorkflowContext
from shoal.workflows.hooks import load_attr
from shoal.workflows.store import RoundStore

__all__ = ["FedAvgParams", "check_spec", "run", "select_sites"]

# Upper bounds of the numeric parameters: a number past them is a typo or an
# attack, and none may reach the job store (SQLite's INTEGER is 64-bit).
_MAX_ROUNDS = 1_000_000
_MAX_ROUND_TIMEOUT_S = 30 * 24 * 3600.0
_MAX_SEED = 2**63 - 1


#: Default of ``max_num_examples``; see FedAvgParams.
DEFAULT_MAX_NUM_EXAMPLES = 10**9
#: Its upper limit: a weight is then exact as a float64.
MAX_NUM_EXAMPLES_LIMIT = 2**53

# A metric must fit TensorBoard's float32.
_METRIC_MAX = float(np.finfo(np.float32).max)


def _number(params: Mapping[str, Any], key: str, default: float | None) -> float | None:
    value = params.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise JobValidationError(f"job.yml: workflow.{key}: must be a number, got {value!r}")
    try:
        return float(value)
    except OverflowError:
        raise JobValidationError(f"job.yml: workflow.{key}: number out of range") from None


@dataclass(frozen=True)
class FedAvgParams:
    """FedAvg's ``workflow:`` parameters."""

    #: Rounds to run (>= 1).
    num_rounds: int
    #: Seconds a round waits for results before going on with what it has.
    round_timeout_s: float = 600.0
    #: Fraction of the job's sites asked each round (0 < f <= 1); at least
    #: ``min_clients`` sites are always asked.
    sample_fraction: float = 1.0
    #: Seed of the per-round site sampling (same seed, same choice of sites).
    seed: int = 0
    #: Round models kept: the last ``keep_models`` ``global_round_NNNN``
    #: files (the initial and the final model always stay); 0 keeps them all.
    keep_models: int = 3
    #: The most ``num_examples`` (a result's weight) a site's result may
    #: claim; a result claiming more is refused, as one claiming <= 0 is.
    #: Refused, not clipped: clipping would hand an over-claiming site the
    #: largest weight there is. 10**9 is ~800 times ImageNet-1k (1.28e6
    #: images) at one site, and a million sites at the bound still total
    #: 1e15 < 2**53, exact as a float64. It bounds one site's weight, it
    #: does not make FedAvg robust: a site at the bound still outweighs one
    #: with 1,000 examples a million times.
    max_num_examples: int = DEFAULT_MAX_NUM_EXAMPLES

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> FedAvgParams:
        """Validate raw params from job.yml; JobValidationError names the field."""
        if not isinstance(params, Mapping):
            raise JobValidationError("job.yml: workflow: must be a mapping")
        known = {
            "name",
            "num_rounds",
            "round_timeout_s",
            "sample_fraction",
            "seed",
            "keep_models",
            "max_num_examples",
        }
        unknown = sorted(set(params) - known)
        if unknown:
            raise JobValidationError(
                f"job.yml: workflow.{unknown[0]}: unknown fedavg parameter "
                f"(known: {', '.join(sorted(known - {'name'}))})"
            )
        rounds = params.get("num_rounds")
        if (
            isinstance(rounds, bool)
            or not isinstance(rounds, int)
            or not 1 <= rounds <= _MAX_ROUNDS
        ):
            raise JobValidationError(
                f"job.yml: workflow.num_rounds: required integer in 1..{_MAX_ROUNDS}, got {rounds!r}"
            )
        timeout = _number(params, "round_timeout_s", 600.0)
        assert timeout is not None
        if not math.isfinite(timeout) or not 0 < timeout <= _MAX_ROUND_TIMEOUT_S:
            raise JobValidationError(
                f"job.yml: workflow.round_timeout_s: must be > 0 and <= "
                f"{_MAX_ROUND_TIMEOUT_S:.0f}, got {timeout!r}"
            )
        fraction = _number(params, "sample_fraction", 1.0)
        assert fraction is not None
        if not 0 < fraction <= 1:
            raise JobValidationError(
                f"job.yml: workflow.sample_fraction: must be in (0, 1], got {fraction!r}"
            )
        seed = params.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MAX_SEED:
            raise JobValidationError(
                f"job.yml: workflow.seed: must be an integer in 0..{_MAX_SEED}, got {seed!r}"
            )
        keep = params.get("keep_models", 3)
        if isinstance(keep, bool) or not isinstance(keep, int) or not 0 <= keep <= _MAX_ROUNDS:
            raise JobValidationError(
                f"job.yml: workflow.keep_models: must be an integer in 0..{_MAX_ROUNDS} (0: keep "
                f"every round's model), got {keep!r}"
            )
        max_examples = params.get("max_num_examples", DEFAULT_MAX_NUM_EXAMPLES)
        if (
            isinstance(max_examples, bool)
            or not isinstance(max_examples, int)
            or not 1 <= max_examples <= MAX_NUM_EXAMPLES_LIMIT
        ):
            raise JobValidationError(
                f"job.yml: workflow.max_num_examples: must be an integer in "
                f"[1, 2**53], got {max_examples!r}"
            )
        return cls(
            num_rounds=rounds,
            round_timeout_s=timeout,
            sample_fraction=fraction,
            seed=seed,
            keep_models=keep,
            max_num_examples=max_examples,
        )


def check_spec(spec: Any) -> None:
    """FedAvg needs the initial global model: ``server.model`` or ``server.initial_weights``."""
    server = spec.server
    if not server.model and not server.initial_weights:
        raise JobValidationError(
            "job.yml: server: fedavg needs server.model or server.initial_weights "
            "to build the initial global model"
        )


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


def _finite_metrics(
    metrics: Mapping[str, Any] | None, *, source: str, log: logging.Logger, round: int
) -> dict[str, float]:
    """The numbers of ``metrics`` that JSON and TensorBoard can hold: finite,
    within float32's range. Any other number is dropped with a warning naming
    ``source`` and the metric (a site sending 1e308 loses that metric, the
    job goes on); values that are not numbers are not metrics and are left
    out silently."""
    out: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            continue
        try:
            f = float(value)
        except OverflowError:  # an int beyond float's range
            f = math.inf
        if not (math.isfinite(f) and abs(f) <= _METRIC_MAX):
            log.warning(
                "round %d: dropped metric %r of %s: %s is not a finite number within "
                "float32's range (|x| <= %.7g)",
                round,
                str(key),
                source,
                _short(value),
                _METRIC_MAX,
            )
            continue
        out[str(key)] = f
    return out


def _weighted_metrics(
    results: Sequence[TaskResult],
    site_metrics: Mapping[str, Mapping[str, float]],
    *,
    log: logging.Logger,
    round: int,
) -> dict[str, float]:
    """Each metric's mean over the sites that reported it, weighted by
    ``num_examples``: ``sum(v * (n / N))``, never ``sum(v * n) / N``, whose
    products overflow (3e38 * 1e9); a mean that is still not finite is
    dropped with a warning, never written."""
    totals: dict[str, int] = {}
    for r in results:
        for key in site_metrics[r.site]:
            totals[key] = totals.get(key, 0) + r.num_examples
    terms: dict[str, list[float]] = {}
    for r in results:
        for key, value in site_metrics[r.site].items():
            terms.setdefault(key, []).append(value * (r.num_examples / totals[key]))
    out: dict[str, float] = {}
    for key, parts in terms.items():
        mean = math.fsum(parts) if all(math.isfinite(p) for p in parts) else math.nan
        if math.isfinite(mean) and abs(mean) <= _METRIC_MAX:
            out[key] = mean
        else:
            log.warning(
                "round %d: dropped the aggregated metric %r: its weighted mean is not finite",
                round,
                key,
            )
    return out


def _short(value: object) -> str:
    """``value`` for a log line: an int of thousands of digits cut short."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digits limit for str()
        return f"<an int of {value.bit_length()} bits>" if isinstance(value, int) else "?"
    return text if len(text) <= 40 else f"{text[:12]}...({len(text)} chars)"


def _call_hook(kind: str, spec: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except ShoalError:
        raise
    except Exception as exc:
        raise JobFailedError(
            f"server.{kind} hook {spec!r} raised {type(exc).__name__}: {exc}"
        ) from exc


def _initial_params(ctx: WorkflowContext, model: Any, adapter: Any) -> dict[str, np.ndarray]:
    server = ctx.spec.server
    if model is not None:
        raw = adapter.get_weights(model)
        origin = f"server.model {server.model!r}"
    elif server.initial_weights:
        fn = load_attr(ctx.app_dir, server.initial_weights)
        raw = _call_hook("initial_weights", server.initial_weights, fn)
        origin = f"server.initial_weights {server.initial_weights!r}"
    else:
        raise JobValidationError(
            "job.yml: server: fedavg needs server.model or server.initial_weights"
        )
    if not isinstance(raw, Mapping) or not raw:
        raise JobFailedError(
            f"{origin} must give a non-empty dict of arrays, got {type(raw).__name__}"
        )
    params = {str(k): np.asarray(v) for k, v in raw.items()}
    try:
        check_finite(params)
    except ArrayFormatError as exc:
        raise JobFailedError(f"{origin}: initial weights are not finite: {exc}") from None
    return params


def _validate(
    result: TaskResult,
    reference: Mapping[str, tuple[str, tuple[int, ...]]],
    *,
    max_num_examples: int,
) -> dict[str, np.ndarray]:
    n = result.num_examples
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ArrayFormatError(f"num_examples is {_short(n)}, must be an integer")
    if n <= 0:
        raise ArrayFormatError(f"num_examples is {n}, must be > 0")
    if n > max_num_examples:
        # Compared as ints: a float of 10**400 would raise, not compare.
        raise ArrayFormatError(
            f"num_examples is {_short(n)}, over the job's "
            f"workflow.max_num_examples={max_num_examples}"
        )
    arrays = result.arrays()
    check_compatible(reference, arrays)
    check_finite(arrays)
    return arrays


def run(ctx: WorkflowContext) -> None:
    """Run FedAvg to the end (or resume it); see the module docstring."""
    params = FedAvgParams.parse(ctx.params)
    spec = ctx.spec
    log = ctx.logger
    min_clients = int(spec.min_clients)
    total = params.num_rounds
    store = RoundStore(ctx.run_dir)
    comm = ctx.comm

    sites = sorted(comm.sites())
    if len(sites) < min_clients:
        raise JobFailedError(
            f"only {len(sites)} site(s) take part ({', '.join(sites) or 'none'}), "
            f"min_clients={min_clients}"
        )

    model: Any = None
    adapter: Any = None
    if spec.server.model:
        from shoal.frameworks import adapter_for

        build = load_attr(ctx.app_dir, spec.server.model)
        model = _call_hook("model", spec.server.model, build)
        adapter = adapter_for(model)

    ckpt = store.load_checkpoint()
    if ckpt is not None:
        global_params = store.load_model(ckpt)
        start = ckpt.round + 1
        log.info(
            "resuming job %s after round %d of %d (%s)", ctx.job_id, ckpt.round, total, ckpt.model
        )
    else:
        global_params = _initial_params(ctx, model, adapter)
        store.save_checkpoint(0, store.write_model(0, global_params))
        start = 1
    store.trim_metrics(start - 1)
    reference = array_specs(global_params)

    evaluate = load_attr(ctx.app_dir, spec.server.evaluate) if spec.server.evaluate else None

    # The last round's commit, run by the next round once its task is out.
    # A list it pops from, so no reference to that round's model outlives it.
    pending: list[Callable[[], None]] = []
    try:
        with ScalarWriter(store.tensorboard_dir) as tb:
            try:
                for k in range(start, total + 1):
                    # The previous global model is on disk: the round takes
                    # it over as the memory of its running mean once the
                    # previous round's commit is done with it, so a round
                    # holds one model, not two.
                    spare = [global_params]
                    del global_params
                    global_params = _round(
                        ctx, params, store, tb, evaluate, sites, k, reference, pending, spare
                    )
            finally:
                # The last round's commit, or a completed round's whose
                # successor failed: what finished is recorded.
                _commit_pending(pending)
            final = store.write_model(total, global_params, final=True)
            log.info("job %s: final global model %s", ctx.job_id, final)
            if adapter is not None and adapter.suffix != ".safetensors":
                _save_native(store, adapter, model, global_params)
    finally:
        store.discard_spare()
        comm.finish()


def _unshared(spare: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray] | None:
    """The model in ``spare`` (taken out of it), if nothing else refers to it
    or to its arrays any more: a server hook (evaluate, a model adapter) may
    have kept it, or a view of it, and must never see it change."""
    params = spare.pop() if spare else None
    if params is None or not hasattr(sys, "getrefcount"):
        return None
    # The dict: `params` and getrefcount's argument. Each array: the dict's
    # slot, `arr` and the argument.
    if sys.getrefcount(params) > 2:
        return None
    for arr in params.values():
        if sys.getrefcount(arr) > 3:
            return None
    return params


def _commit_pending(pending: list[Callable[[], None]]) -> None:
    while pending:
        pending.pop()()


def _save_native(
    store: RoundStore, adapter: Any, model: Any, params: Mapping[str, np.ndarray]
) -> None:
    adapter.set_weights(model, params)
    target = store.final_path(adapter.suffix)
    tmp = target.with_name(f".global_final.tmp{adapter.suffix}")
    adapter.save(model, tmp)
    os.replace(tmp, target)


def _round(
    ctx: WorkflowContext,
    params: FedAvgParams,
    store: RoundStore,
    tb: ScalarWriter,
    evaluate: Any,
    sites: Sequence[str],
    k: int,
    reference: Mapping[str, tuple[str, tuple[int, ...]]],
    pending: list[Callable[[], None]],
    spare: list[dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    log = ctx.logger
    comm = ctx.comm
    total = params.num_rounds
    min_clients = int(ctx.spec.min_clients)
    selected = select_sites(
        sites, k, fraction=params.sample_fraction, min_clients=min_clients, seed=params.seed
    )
    started = time.monotonic()
    started_wall = time.time()
    weights_path = store.model_path(k - 1)
    task_id = comm.scatter(
        task="train",
        round=k,
        weights_path=weights_path,
        sites=selected,
        meta={"current_round": k, "total_rounds": total},
        weights_checksum=store.model_checksum(weights_path),
    )
    log.info(
        "round %d/%d: task %s sent to %d site(s): %s",
        k,
        total,
        task_id,
        len(selected),
        ", ".join(selected),
    )
    # The sites are downloading: commit the previous round meanwhile.
    _commit_pending(pending)
    comm.report(round=k, total_rounds=total, status="training", sites=list(selected))

    mean = WeightedMean(reuse=_unshared(spare))
    accepted: dict[str, TaskResult] = {}
    refused: dict[str, str] = {}
    for result in comm.gather(task_id, timeout=params.round_timeout_s):
        site = result.site
        if site not in selected or site in accepted or result.round != k:
            log.warning(
                "round %d: ignoring unexpected result from %s (round %d)", k, site, result.round
            )
            continue
        arrays: dict[str, np.ndarray] | None = None
        try:
            arrays = _validate(result, reference, max_num_examples=params.max_num_examples)
            mean.add(arrays, weight=result.num_examples)
        except ArrayFormatError as exc:
            refused[site] = str(exc)
            log.warning("round %d: refused the result of %s: %s", k, site, exc)
            continue
        finally:
            # Unmap this result now, not when the next one is already mapped:
            # memory stays at the running mean plus one result.
            arrays = None
        accepted[site] = result
        if result.path.name:
            # Folded in, its arrays dropped: the new model is written over it.
            store.adopt_spare(result.path)
        log.info("round %d: result from %s (%d examples)", k, site, result.num_examples)

    if len(accepted) < min_clients:
        missing = [
            f"{s} ({refused[s]})" if s in refused else s for s in selected if s not in accepted
        ]
        raise JobFailedError(
            f"round {k}: only {len(accepted)} of the required min_clients={min_clients} sites "
            f"returned a valid result (missing: {', '.join(missing) or 'none'})"
        )

    # The gather is complete: only now does the round's mean become the global
    # model. Written (and checksummed) now, so the next round can offer it; made
    # durable and recorded by commit(), which the next round runs once its
    # task is out.
    try:
        new_global = mean.result()
    except ArrayFormatError as exc:
        # Finite results give a finite mean; never offer a model that is not.
        raise JobFailedError(f"round {k}: the aggregated model is refused: {exc}") from None
    model_path = store.write_model(k, new_global, durable=False)
    duration = time.monotonic() - started
    results = [accepted[s] for s in sorted(accepted)]

    def commit() -> None:
        store.sync_model(model_path)
        num_examples = sum(r.num_examples for r in results)
        server_metrics: dict[str, float] = {}
        if evaluate is not None:
            raw = _call_hook("evaluate", ctx.spec.server.evaluate, evaluate, new_global, k)
            if raw is not None and not isinstance(raw, Mapping):
                raise JobFailedError(
                    f"server.evaluate hook {ctx.spec.server.evaluate!r} must return a dict "
                    "of numbers"
                )
            server_metrics = _finite_metrics(
                raw, source=f"server.evaluate {ctx.spec.server.evaluate!r}", log=log, round=k
            )
        site_metrics = {
            r.site: _finite_metrics(r.metrics, source=r.site, log=log, round=k) for r in results
        }
        aggregated = _weighted_metrics(results, site_metrics, log=log, round=k)
        store.append_metrics(
            {
                "round": k,
                "started": round(started_wall, 3),
                "num_examples": num_examples,
                "sites": site_metrics,
                "aggregated": aggregated,
                "server": server_metrics,
                "duration_s": round(duration, 3),
                "missing": [s for s in selected if s not in accepted],
            }
        )
        scalars = {f"server/{m}": v for m, v in server_metrics.items()}
        scalars.update({f"aggregated/{m}": v for m, v in aggregated.items()})
        for site, metrics in site_metrics.items():
            scalars.update({f"sites/{site}/{m}": v for m, v in metrics.items()})
        scalars["round/num_examples"] = float(num_examples)
        scalars["round/duration_s"] = duration
        tb.add_scalars(scalars, step=k)
        store.save_checkpoint(k, model_path)
        if params.keep_models:
            store.prune_models(keep=params.keep_models, latest=k)
        log.info(
            "round %d/%d done: %d/%d site(s), %d examples, %.2fs%s",
            k,
            total,
            len(accepted),
            len(selected),
            num_examples,
            duration,
            "".join(f", {m}={v:.4g}" for m, v in server_metrics.items()),
        )
        comm.report(
            round=k,
            total_rounds=total,
            status="round_done",
            num_examples=num_examples,
            sites={s: ("ok" if s in accepted else "missing") for s in selected},
            metrics=server_metrics or aggregated,
            duration_s=duration,
        )

    pending.append(commit)
    return new_global
