"""FedBuff: asynchronous buffered aggregation (Nguyen et al., AISTATS 2022).

No rounds: every site always holds a task. When a site's result arrives the
server folds its update into a buffer at once, weighted by its staleness,
and gives that site a new task with the latest model; every ``buffer_size``
(K) results it publishes a new model version. A site ten times slower than
the others never holds them up; its updates arrive stale and count less.

A site trained on version ``v`` and answers while the server is at version
``t``: its staleness is ``tau = t - v`` and its update ``delta = y - x_v``
(``y`` its weights, ``x_v`` the version it was sent; a ``params_type: diff``
result is ``delta`` already). With ``s(tau) = (1 + tau) ** -a`` (the paper's
choice is ``a = 1/2``, ``staleness: polynomial``) or ``s = 1``
(``constant``), after K results (Algorithm 1 of the paper, its ``Delta`` being
our ``-delta``)::

    x <- x + server_lr * sum(s(tau_i) * delta_i) / K

Unweighted by ``num_examples``, as in the paper (it is checked as FedAvg
checks it). Versions still held by an open task stay on disk (``models/
global_round_NNNN.safetensors``, NNNN the version); the others are removed.
Each version is committed like a driver's round: model fsynced, the server's
``evaluate`` hook, a ``metrics.jsonl`` line (its ``round`` is the version),
TensorBoard scalars, the checkpoint; a restarted run resumes from the last
checkpointed version. The buffer of the version in progress is saved after
each result folded into it (``server_state/round_NNNN.safetensors``, NNNN the
version it builds on: the running sums as arrays, the results' counts,
metrics and stalenesses as JSON; written atomically and fsynced, one model's
worth of bytes per result), so a restart mid-version keeps the results
already folded; only a result that arrived after the last save is re-done.
Results staler than ``max_staleness`` are dropped (logged). A
result that fails the driver's checks is refused (logged); either way the
site gets a new task. No result for ``round_timeout_s`` seconds, or every
site gone, fails the job with the versions published so far checkpointed.
Arrays that are not floating point (counters) keep the global model's value.
The job's ``result_in`` filters run on each result before it is checked and
folded, as the round driver runs them (their reference: the version the
site was sent); ``model_out`` filters are refused at submit.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shoal.arrays import array_specs, check_finite, load_arrays
from shoal.errors import ArrayFormatError, JobFailedError, JobValidationError
from shoal.observe.tracking import Trackers, workflow_trackers
from shoal.workflows.api import TaskResult, WorkflowContext
from shoal.workflows.driver import (
    DEFAULT_MAX_NUM_EXAMPLES,
    MAX_NUM_EXAMPLES_LIMIT,
    needs_initial_model,
)
from shoal.workflows.hooks import load_attr
from shoal.workflows.metrics import finite_metrics, weighted_metrics
from shoal.workflows.params import param, parser
from shoal.workflows.results import (
    filter_result,
    server_filters,
    validate_result,
    without_arrays,
)
from shoal.workflows.servermodel import call_hook, initial_params, save_native, server_model_of
from shoal.workflows.store import Checkpoint, RoundStore

__all__ = ["FedBuffParams", "check_spec", "parse_params", "run", "staleness_weight"]

_MAX_VERSIONS = 1_000_000
_MAX_TIMEOUT_S = 30 * 24 * 3600.0


@dataclass(frozen=True)
class FedBuffParams:
    """FedBuff's ``workflow:`` parameters."""

    #: Model versions to publish (>= 1); the job ends after the last one.
    num_versions: int = param(doc="model versions to publish", lo=1, hi=_MAX_VERSIONS)
    #: K: results folded into each new version.
    buffer_size: int = param(3, doc="results folded into each new version (K)", lo=1, hi=10_000)
    #: eta_g, the server learning rate applied to the buffer's mean update.
    server_lr: float = param(1.0, doc="server learning rate", lo=0, lo_open=True, hi=1e6)
    #: How an update's weight falls with its staleness tau.
    staleness: str = param(
        "polynomial",
        doc="staleness weight: polynomial (1+tau)**-a, or constant 1",
        choices=("polynomial", "constant"),
    )
    #: a in (1 + tau) ** -a; the paper's 0.5 is 1/sqrt(1 + tau).
    staleness_exponent: float = param(0.5, doc="a of the polynomial weight", lo=0, hi=100)
    #: Results more versions behind than this are dropped (logged).
    max_staleness: int = param(
        _MAX_VERSIONS, doc="results staler than this many versions are dropped", lo=0
    )
    #: Seconds without any result after which the job fails.
    round_timeout_s: float = param(
        600.0,
        doc="seconds without any result before the job fails",
        lo=0,
        lo_open=True,
        hi=_MAX_TIMEOUT_S,
    )
    #: As FedAvg's: the most num_examples a result may claim.
    max_num_examples: int = param(
        DEFAULT_MAX_NUM_EXAMPLES,
        doc="the most num_examples a result may claim",
        lo=1,
        hi=MAX_NUM_EXAMPLES_LIMIT,
        text="[1, 2**53]",
    )


#: Raw ``workflow:`` params -> FedBuffParams; JobValidationError names the field.
parse_params = parser(FedBuffParams, workflow="fedbuff")


def check_spec(spec: Any) -> None:
    """FedBuff needs an initial model; it runs ``result_in`` filters, not
    ``model_out`` ones (each version would need its own filtered copy held
    as long as a site trains on it)."""
    needs_initial_model("fedbuff")(spec)
    filters = getattr(spec, "filters", None) or {}
    if filters.get("model_out"):
        raise JobValidationError(
            "job.yml: filters.model_out: fedbuff does not apply model_out filters "
            "(result_in filters run on every result)"
        )


def staleness_weight(tau: int, *, kind: str = "polynomial", exponent: float = 0.5) -> float:
    """s(tau): 1 for ``constant``, ``(1 + tau) ** -exponent`` for ``polynomial``.

    >>> staleness_weight(3)
    0.5
    """
    if kind == "constant":
        return 1.0
    return float((1.0 + tau) ** -exponent)


#: The buffer file's JSON part (the sums are its arrays, ``sum/NAME``).
_BUFFER_KEY = "fedbuff_buffer"
_SUM = "sum/"


class _Buffer:
    """The running sum of weighted updates of the float arrays (memory: one model)."""

    def __init__(self, reference: Mapping[str, np.ndarray]) -> None:
        self.sums = {
            k: np.zeros(v.shape, v.dtype) for k, v in reference.items() if v.dtype.kind == "f"
        }
        self.results: list[TaskResult] = []
        self.stalenesses: list[int] = []
        #: Seconds the version had been building before this run (a resumed buffer).
        self.elapsed_before = 0.0

    def state(self, version: int, elapsed: float) -> dict[str, Any]:
        """What :meth:`RoundStore.write_state` saves: the sums, and the rest as JSON."""
        state: dict[str, Any] = {_SUM + k: v for k, v in self.sums.items()}
        state[_BUFFER_KEY] = {
            "version": version,
            "elapsed_s": elapsed,
            "stalenesses": list(self.stalenesses),
            "results": [_result_doc(r) for r in self.results],
        }
        return state

    @classmethod
    def restore(
        cls, reference: Mapping[str, np.ndarray], version: int, state: Mapping[str, Any]
    ) -> _Buffer:
        """The buffer :meth:`state` saved on top of ``version``; ValueError
        (saying why) when it is another version's or does not fit the model."""
        doc = state.get(_BUFFER_KEY)
        if not isinstance(doc, dict):
            raise ValueError("no fedbuff buffer in it")
        if doc.get("version") != version:
            raise ValueError(f"it builds on version {doc.get('version')!r}, not {version}")
        buffer = cls(reference)
        sums = {k[len(_SUM) :]: v for k, v in state.items() if k.startswith(_SUM)}
        if array_specs(sums) != array_specs(buffer.sums):
            raise ValueError("its sums do not match the model's float arrays")
        buffer.sums = {k: np.array(v) for k, v in sums.items()}
        results, stalenesses = doc.get("results"), doc.get("stalenesses")
        if not isinstance(results, list) or not isinstance(stalenesses, list):
            raise ValueError("results and stalenesses must be lists")
        if len(results) != len(stalenesses) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in stalenesses
        ):
            raise ValueError("stalenesses must be one integer >= 0 per result")
        buffer.results = [_result_of(r) for r in results]
        buffer.stalenesses = list(stalenesses)
        elapsed = doc.get("elapsed_s", 0.0)
        ok = isinstance(elapsed, (int, float)) and 0 <= elapsed < _MAX_TIMEOUT_S * _MAX_VERSIONS
        buffer.elapsed_before = float(elapsed) if ok else 0.0
        return buffer

    def add(self, delta: Mapping[str, np.ndarray], weight: float) -> None:
        with np.errstate(over="ignore", invalid="ignore"):
            for name, total in self.sums.items():
                total += np.asarray(weight, total.dtype) * delta[name]

    def apply(
        self, model: dict[str, np.ndarray], *, lr: float, version: int
    ) -> dict[str, np.ndarray]:
        """``model`` moved by ``lr`` times the buffer's mean update."""
        scale = lr / len(self.results)
        out = dict(model)
        with np.errstate(over="ignore", invalid="ignore"):
            for name, total in self.sums.items():
                x = model[name]
                out[name] = (x + np.asarray(scale, x.dtype) * total).astype(x.dtype, copy=False)
        try:
            check_finite(out)
        except ArrayFormatError as exc:
            raise JobFailedError(f"version {version}: the new model is refused: {exc}") from None
        return out


def _result_doc(result: TaskResult) -> dict[str, Any]:
    """A folded result's counts and metrics, as strict JSON (no arrays)."""
    metrics = {
        str(k): float(v)
        for k, v in result.metrics.items()
        if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and np.isfinite(v)
    }
    try:
        meta = json.loads(json.dumps(dict(result.meta), allow_nan=False))
    except (TypeError, ValueError):
        meta = {}
    return {
        "site": result.site,
        "task_id": result.task_id,
        "round": int(result.round),
        "num_examples": int(result.num_examples),
        "metrics": metrics,
        "meta": meta,
        "params_type": result.params_type,
    }


def _result_of(doc: Any) -> TaskResult:
    """:func:`_result_doc` read back; ValueError when it is not one."""
    if not isinstance(doc, dict):
        raise ValueError("a result must be a JSON object")
    try:
        metrics, meta = doc["metrics"], doc["meta"]
        if not isinstance(metrics, dict) or not isinstance(meta, dict):
            raise ValueError("metrics and meta must be objects")
        return TaskResult(
            site=str(doc["site"]),
            task_id=str(doc["task_id"]),
            round=int(doc["round"]),
            num_examples=int(doc["num_examples"]),
            metrics={str(k): float(v) for k, v in metrics.items()},
            path=Path(),
            meta=meta,
            params_type=str(doc["params_type"]),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"a result lacks or garbles {exc}") from None


def _delta(
    result: TaskResult,
    sent: str,
    reference: Mapping[str, tuple[str, tuple[int, ...]]],
    *,
    max_num_examples: int,
    store: RoundStore,
) -> dict[str, np.ndarray]:
    """The site's update against the version it was sent (file ``sent``),
    after the driver's checks of a result; ArrayFormatError if refused."""
    if result.params_type == "diff":
        # Already the update: checked as weights are, never added to a model.
        plain = dataclasses.replace(result, params_type="full")
        return validate_result(
            plain, reference, max_num_examples=max_num_examples, global_model=dict
        )
    weights = validate_result(
        result, reference, max_num_examples=max_num_examples, global_model=dict
    )
    old = load_arrays(store.run_dir / sent, mmap=True)
    with np.errstate(over="ignore", invalid="ignore"):
        delta = {k: np.subtract(v, old[k]) for k, v in weights.items() if v.dtype.kind == "f"}
    check_finite(delta)
    return delta


def run(ctx: WorkflowContext) -> None:
    """Run FedBuff to ``num_versions`` (or resume it); see the module doc."""
    _FedBuff(ctx, parse_params(ctx.params)).run()


class _FedBuff:
    def __init__(self, ctx: WorkflowContext, params: FedBuffParams) -> None:
        self.ctx, self.p, self.log, self.comm = ctx, params, ctx.logger, ctx.comm
        self.store = RoundStore(ctx.run_dir)
        self.sites: Sequence[str] = sorted(self.comm.sites())
        min_clients = int(ctx.spec.min_clients)
        if len(self.sites) < min_clients:
            raise JobFailedError(
                f"only {len(self.sites)} site(s) take part "
                f"({', '.join(self.sites) or 'none'}), min_clients={min_clients}"
            )
        hook = ctx.spec.server.evaluate
        self.evaluate = load_attr(ctx.app_dir, hook) if hook else None
        #: The job's result_in filters, run on each result as the round driver does.
        self.result_in = server_filters(ctx).get("result_in")
        #: Task id -> the version it was sent; site -> its open task.
        self.task_version: dict[str, int] = {}
        self.open: dict[str, str] = {}
        #: Results folded in per site, over the run.
        self.contributions: dict[str, int] = dict.fromkeys(self.sites, 0)

    def run(self) -> None:
        store, p, log = self.store, self.p, self.log
        server_model = server_model_of(self.ctx)
        ckpt = store.load_checkpoint()
        buffer: _Buffer | None = None
        if ckpt is not None:
            model, version = store.load_model(ckpt), ckpt.round
            log.info(
                "resuming job %s at version %d of %d", self.ctx.job_id, version, p.num_versions
            )
            buffer = self._load_buffer(ckpt, model)
            # Buffers of other versions (a crash between a checkpoint and
            # their removal) are of no use: only this version's is resumed.
            for path in store.state_dir.glob("round_*.safetensors"):
                if path != store.state_path(version):
                    path.unlink(missing_ok=True)
        else:
            model, version = initial_params(self.ctx, server_model, "fedbuff"), 0
            store.save_checkpoint(0, store.write_model(0, model))
        store.trim_metrics(version)
        try:
            with workflow_trackers(self.ctx, store.tensorboard_dir) as tb:
                if version < p.num_versions:
                    model = self._versions(model, version, tb, buffer or _Buffer(model))
                final = store.write_model(p.num_versions, model, final=True)
                log.info("job %s: final global model %s", self.ctx.job_id, final)
                native = server_model.adapter
                if native is not None and native.suffix != ".safetensors":
                    save_native(store, server_model, model)
                    tb.log_model(store.final_path(native.suffix))
                tb.log_model(final)
        finally:
            self.comm.finish()

    def _send(self, version: int, sites: Sequence[str]) -> None:
        path = self.store.model_path(version)
        task_id = self.comm.scatter(
            task="train",
            round=version + 1,
            weights_path=path,
            sites=sites,
            meta=self.ctx.task_meta(
                current_round=version + 1, total_rounds=self.p.num_versions, model_version=version
            ),
            weights_checksum=self.store.model_checksum(path),
            supersede="targets",
        )
        self.task_version[task_id] = version
        self.open.update(dict.fromkeys(sites, task_id))

    def _load_buffer(self, ckpt: Checkpoint, model: Mapping[str, np.ndarray]) -> _Buffer | None:
        """The buffer saved on top of the checkpointed version, if one is there
        and fits (a bad one is logged and set aside: its results are re-done)."""
        store, version = self.store, ckpt.round
        path = store.state_path(version)
        if not path.exists():
            return None
        rel = path.relative_to(store.run_dir).as_posix()
        try:
            state = store.load_state(dataclasses.replace(ckpt, state=rel))
            buffer = _Buffer.restore(model, version, state)
        except (OSError, ValueError, ArrayFormatError) as exc:
            self.log.warning("ignoring the saved buffer %s: %s", path, exc)
            return None
        for r in buffer.results:
            if r.site in self.contributions:
                self.contributions[r.site] += 1
        self.log.info(
            "version %d: %d result(s) already in the buffer (%s)",
            version + 1,
            len(buffer.results),
            ", ".join(r.site for r in buffer.results),
        )
        return buffer

    def _versions(
        self, model: dict[str, np.ndarray], version: int, tb: Trackers, buffer: _Buffer
    ) -> dict[str, np.ndarray]:
        p, log, store = self.p, self.log, self.store
        reference = array_specs(model)
        self._send(version, self.sites)
        self.comm.report(
            round=version + 1,
            total_rounds=p.num_versions,
            status="training",
            sites=list(self.sites),
        )
        started = time.monotonic() - buffer.elapsed_before
        for result in self.comm.stream(timeout=p.round_timeout_s):
            site = result.site
            if self.open.get(site) != result.task_id:
                log.warning("ignoring an unexpected result from %s (%s)", site, result.task_id)
                continue
            sent = self.task_version[result.task_id]
            if self.result_in is not None:
                result = filter_result(
                    self.result_in,
                    result,
                    job_id=self.ctx.job_id,
                    round=sent + 1,
                    total_rounds=p.num_versions,
                    reference=load_arrays(store.model_path(sent), mmap=True),
                )
            held = len(buffer.results)
            self._fold(result, version - sent, sent, reference, buffer)
            # >=: a buffer resumed with a smaller buffer_size is published at once.
            published = len(buffer.results) >= p.buffer_size
            if published:
                model = buffer.apply(model, lr=p.server_lr, version=version + 1)
                version += 1
                store.write_model(version, model, durable=False)
            elif len(buffer.results) > held:
                # Kept across a restart: the results folded so far are not re-done.
                store.write_state(version, buffer.state(version, time.monotonic() - started))
            if version >= p.num_versions:
                self._commit(version, model, buffer, started, tb)
                return model
            # The answering site trains again at once, on the latest model.
            self._send(version, [site])
            if published:
                self._commit(version, model, buffer, started, tb)
                buffer, started = _Buffer(model), time.monotonic()
            # After the commit: the checkpoint never names a removed file.
            self._forget_versions(version)
        raise JobFailedError(
            f"fedbuff: no result for {p.round_timeout_s:g} s, or no site left to answer; "
            f"{version} of {p.num_versions} version(s) published"
        )

    def _fold(
        self,
        result: TaskResult,
        tau: int,
        sent: int,
        reference: Mapping[str, tuple[str, tuple[int, ...]]],
        buffer: _Buffer,
    ) -> None:
        p, log = self.p, self.log
        if tau > p.max_staleness:
            log.warning(
                "dropped the result of %s: trained on version %d, %d version(s) old "
                "(max_staleness=%d)",
                result.site,
                sent,
                tau,
                p.max_staleness,
            )
            return
        try:
            delta = _delta(
                result,
                self.store.model_path(sent).relative_to(self.store.run_dir).as_posix(),
                reference,
                max_num_examples=p.max_num_examples,
                store=self.store,
            )
        except ArrayFormatError as exc:
            log.warning("refused the result of %s: %s", result.site, exc)
            return
        weight = staleness_weight(tau, kind=p.staleness, exponent=p.staleness_exponent)
        buffer.add(delta, weight)
        del delta
        buffer.results.append(without_arrays(result))
        buffer.stalenesses.append(tau)
        self.contributions[result.site] += 1
        log.info(
            "result from %s: version %d, staleness %d, weight %.3g (%d/%d in the buffer)",
            result.site,
            sent,
            tau,
            weight,
            len(buffer.results),
            p.buffer_size,
        )

    def _forget_versions(self, latest: int) -> None:
        """Remove the version files no open task holds (0 and ``latest`` stay)."""
        held = {self.task_version[t] for t in self.open.values()}
        self.task_version = {t: v for t, v in self.task_version.items() if t in self.open.values()}
        models = self.store.models_dir
        for path in models.glob("global_round_*.safetensors"):
            try:
                v = int(path.stem.rsplit("_", 1)[1])
            except ValueError:
                continue
            if 0 < v < latest and v not in held:
                path.unlink(missing_ok=True)

    def _commit(
        self,
        version: int,
        model: dict[str, np.ndarray],
        buffer: _Buffer,
        started: float,
        tb: Trackers,
    ) -> None:
        """Make ``version`` durable and record it, as the driver commits a round."""
        store, log, p = self.store, self.log, self.p
        path = store.model_path(version)
        store.sync_model(path)
        server_metrics: dict[str, float] = {}
        if self.evaluate is not None:
            hook = self.ctx.spec.server.evaluate
            raw = call_hook("evaluate", hook, self.evaluate, model, version)
            if raw is not None and not isinstance(raw, Mapping):
                raise JobFailedError(f"server.evaluate hook {hook!r} must return a dict of numbers")
            server_metrics = finite_metrics(
                raw, source=f"server.evaluate {hook!r}", log=log, round=version
            )
        # One entry per result (a fast site may be in the buffer many times).
        results = [dataclasses.replace(r, site=str(i)) for i, r in enumerate(buffer.results)]
        per_result = {
            r.site: finite_metrics(o.metrics, source=o.site, log=log, round=version)
            for r, o in zip(results, buffer.results, strict=True)
        }
        aggregated = weighted_metrics(results, per_result, log=log, round=version)
        num_examples = sum(r.num_examples for r in results)
        counts: dict[str, int] = {}
        for r in buffer.results:
            counts[r.site] = counts.get(r.site, 0) + 1
        duration = time.monotonic() - started
        mean_tau = sum(buffer.stalenesses) / len(buffer.stalenesses)
        store.append_metrics(
            {
                "round": version,
                "started": round(time.time() - duration, 3),
                "num_examples": num_examples,
                "sites": {
                    o.site: per_result[r.site] for r, o in zip(results, buffer.results, strict=True)
                },
                "contributions": counts,
                "staleness": {"mean": mean_tau, "max": max(buffer.stalenesses)},
                "aggregated": aggregated,
                "server": server_metrics,
                "duration_s": round(duration, 3),
                "missing": [],
            }
        )
        scalars = {f"server/{m}": v for m, v in server_metrics.items()}
        scalars.update({f"aggregated/{m}": v for m, v in aggregated.items()})
        scalars.update(
            {f"sites/{s}/contributions": float(n) for s, n in self.contributions.items()}
        )
        scalars["version/num_examples"] = float(num_examples)
        scalars["version/duration_s"] = duration
        scalars["version/staleness_mean"] = mean_tau
        tb.add_scalars(scalars, step=version)
        store.save_checkpoint(version, path)
        # The buffer that built this version is in it now.
        store.state_path(version - 1).unlink(missing_ok=True)
        log.info(
            "version %d/%d published: %d result(s) from %s, mean staleness %.2f, %.2fs%s",
            version,
            p.num_versions,
            len(buffer.results),
            ", ".join(f"{s}x{n}" for s, n in sorted(counts.items())),
            mean_tau,
            duration,
            "".join(f", {m}={v:.4g}" for m, v in server_metrics.items()),
        )
        self.comm.report(
            round=version,
            total_rounds=p.num_versions,
            status="round_done",
            num_examples=num_examples,
            sites={s: ("ok" if s in counts else "training") for s in self.sites},
            contributions=dict(self.contributions),
            metrics=server_metrics or aggregated,
            duration_s=duration,
        )
