"""FedAvg in which the server learns only the sum: secure aggregation (SecAgg+).

Each round runs the four stages of ``shoal.workflows.secagg_round`` (keys,
shares, masked training, unmasking; the protocol is ``shoal.privacy.secagg``)
and moves the global model by the weighted mean of the sites' updates::

    x <- x + sum_i w_i * clip(y_i - x) / sum_i w_i,   w_i = min(num_examples_i, max_weight)

(``weighting: uniform``: every ``w_i = 1``). The weights are summed inside
the masked vector, so the server learns their sum, not one of them. Each
coordinate of an update is clipped to ``[-clip_range, clip_range]`` and
quantized to a ``bits``-bit ring: the mean is FedAvg's to within one
quantization step per site (``docs/privacy.md``). Arrays that are not
floating point (counters) keep the global model's value.

Sites that drop after sending their masked update do not stop the round
while ``threshold`` of each site's share holders survive; a site caught
revealing a share its dealer never committed to is left out of later
rounds (``metrics.jsonl``'s ``secagg.inconsistent``). Each round is
committed as the driver commits one (model fsynced, ``server.evaluate``,
``metrics.jsonl``, TensorBoard, checkpoint, pruning), and a run restarted
after a crash resumes after the last checkpointed round, with the sites
left out so far.

    workflow:
      name: secagg
      num_rounds: 5
      clip_range: 0.5       # each coordinate of an update, clipped to +-0.5
      neighbours: 0         # SecAgg+: each site pairs with this many (even); 0: all
      threshold: 0          # shares to rebuild a secret; 0: more than half the holders
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shoal.errors import JobFailedError, JobValidationError, WorkflowSuspended
from shoal.privacy.secagg.ring import RING_BITS
from shoal.tensorboard import ScalarWriter
from shoal.workflows.api import WorkflowContext
from shoal.workflows.driver import RoundParams, needs_initial_model, select_sites
from shoal.workflows.evaluate import no_server_filters
from shoal.workflows.hooks import load_attr
from shoal.workflows.metrics import finite_metrics, weighted_metrics
from shoal.workflows.params import param, parser
from shoal.workflows.secagg_round import RoundOutcome, StageLimits, run_secagg_round
from shoal.workflows.servermodel import call_hook, initial_params, save_native, server_model_of
from shoal.workflows.store import RoundStore

__all__ = ["SecAggParams", "check_spec", "parse_params", "run"]

_MAX_SITES = 100_000


@dataclass(frozen=True)
class SecAggParams(RoundParams):
    """``secagg``'s ``workflow:`` parameters: the round driver's and the protocol's."""

    #: Each coordinate of a site's update is clipped to this range: the
    #: ring's range, so it sets the quantization step (2 * clip_range /
    #: levels) as well as the clipping bias.
    clip_range: float = param(
        1.0,
        doc="each coordinate of an update is clipped to [-clip_range, clip_range]",
        lo=0,
        lo_open=True,
        hi=1e9,
    )
    #: SecAgg+'s neighbours per site (an even number): masks and shares cost
    #: O(neighbours) per site instead of O(sites). 0: every other site (SecAgg).
    neighbours: int = param(
        0, doc="neighbours each site pairs with (even; 0: every other site)", lo=0, hi=_MAX_SITES
    )
    #: Shares needed to rebuild a site's secrets; must be more than half of
    #: a site's holders (its neighbours and itself). 0: the least that is.
    threshold: int = param(
        0,
        doc="shares that rebuild a site's secrets (0: more than half its holders)",
        lo=0,
        hi=_MAX_SITES,
    )
    #: The ring's width: 32 (uint32 updates) or 16 (uint16: half the bytes,
    #: a step 65,536 times coarser).
    bits: int = param(32, doc="bits of the ring the updates are summed in (16 or 32)", lo=16, hi=32)
    #: How updates are weighted: by num_examples (capped at max_weight) or equally.
    weighting: str = param(
        "num_examples",
        doc="weight of an update: its num_examples (capped at max_weight), or uniform",
        choices=("num_examples", "uniform"),
    )
    #: The most an update's weight counts; an update is scaled by
    #: weight / max_weight before it is quantized, so a max_weight far above
    #: the sites' num_examples costs precision.
    max_weight: int = param(
        10_000, doc="the most num_examples an update is weighted by", lo=1, hi=2**31 - 1
    )
    #: Seconds each stage other than training waits for answers.
    stage_timeout_s: float = param(
        120.0, doc="seconds each key, share and unmask stage waits", lo=0, lo_open=True, hi=86_400
    )


#: Raw ``workflow:`` params -> SecAggParams; JobValidationError names the field.
_parse = parser(SecAggParams, workflow="secagg")


def parse_params(raw: Mapping[str, Any]) -> SecAggParams:
    params = _parse(raw)
    if params.bits not in RING_BITS:
        raise JobValidationError(
            f"job.yml: workflow.bits: must be one of {sorted(RING_BITS)}, got {params.bits}"
        )
    if params.neighbours % 2:
        raise JobValidationError(
            f"job.yml: workflow.neighbours: must be even (or 0), got {params.neighbours}"
        )
    if params.evaluate_after:
        raise JobValidationError(
            "job.yml: workflow.evaluate_after: a cross-site evaluation sends each site's own "
            "model to the server, which secure aggregation exists to prevent"
        )
    return params


def check_spec(spec: Any) -> None:
    """An initial model, no server-side filters (they would see masked
    integers), and a ring wide enough for the sites' weights."""
    needs_initial_model("secagg")(spec)
    no_server_filters("secagg", spec)
    p = parse_params(spec.workflow.params)
    weight = 1 if p.weighting == "uniform" else p.max_weight
    sites = max(int(spec.min_clients), len(getattr(spec, "sites", None) or ()))
    if sites * weight >= 1 << p.bits:
        raise JobValidationError(
            f"job.yml: workflow.max_weight: {weight} times {sites} sites does not fit a "
            f"{p.bits}-bit ring"
        )


def run(ctx: WorkflowContext) -> None:
    """Run secure FedAvg to the end (or resume it); see the module doc."""
    _SecAgg(ctx, parse_params(ctx.params)).run()


class _SecAgg:
    def __init__(self, ctx: WorkflowContext, params: SecAggParams) -> None:
        self.ctx, self.p, self.log = ctx, params, ctx.logger
        self.store = RoundStore(ctx.run_dir)
        self.min_clients = int(ctx.spec.min_clients)
        hook = ctx.spec.server.evaluate
        self.evaluate = load_attr(ctx.app_dir, hook) if hook else None
        #: Sites caught revealing shares they were never dealt: left out.
        self.excluded: dict[str, str] = {}

    def run(self) -> None:
        ctx, p, store, log = self.ctx, self.p, self.store, self.log
        sites = sorted(ctx.comm.sites())
        if len(sites) < self.min_clients:
            raise JobFailedError(
                f"only {len(sites)} site(s) take part ({', '.join(sites) or 'none'}), "
                f"min_clients={self.min_clients}"
            )
        server_model = server_model_of(ctx)
        ckpt = store.load_checkpoint()
        if ckpt is not None:
            model, start = store.load_model(ckpt), ckpt.round + 1
            self.excluded = json.loads(str(store.load_state(ckpt).get("excluded", "{}")))
            log.info("resuming job %s after round %d of %d", ctx.job_id, ckpt.round, p.num_rounds)
        else:
            model, start = initial_params(ctx, server_model, "secagg"), 1
            store.save_checkpoint(0, store.write_model(0, model))
        store.trim_metrics(start - 1)
        del model
        weight = 1 if p.weighting == "uniform" else p.max_weight
        limits = StageLimits(
            train_timeout_s=p.round_timeout_s,
            stage_timeout_s=p.stage_timeout_s,
            max_num_examples=p.max_num_examples,
            min_clients=self.min_clients,
        )
        try:
            with ScalarWriter(store.tensorboard_dir) as tb:
                for k in range(start, p.num_rounds + 1):
                    allowed = [s for s in sites if s not in self.excluded]
                    selected = select_sites(
                        allowed,
                        k,
                        fraction=p.sample_fraction,
                        min_clients=self.min_clients,
                        seed=p.seed,
                    )
                    started, wall = time.monotonic(), time.time()
                    outcome = run_secagg_round(
                        ctx,
                        round=k,
                        sites=selected,
                        model_path=store.model_path(k - 1),
                        total_rounds=p.num_rounds,
                        limits=limits,
                        degree=p.neighbours,
                        threshold=p.threshold,
                        bits=p.bits,
                        clip_range=p.clip_range,
                        max_weight=weight,
                    )
                    self.excluded.update(outcome.inconsistent)
                    self._commit(k, selected, outcome, wall, time.monotonic() - started, tb)
                    del outcome
                    if k < p.num_rounds and ctx.stop_requested():
                        raise WorkflowSuspended(k)
            last = store.load_checkpoint()
            assert last is not None
            final_model = store.load_model(last)
            final = store.write_model(p.num_rounds, final_model, final=True)
            log.info("job %s: final global model %s", ctx.job_id, final)
            if server_model.adapter is not None and server_model.adapter.suffix != ".safetensors":
                save_native(store, server_model, final_model)
        finally:
            self.ctx.comm.finish()

    def _commit(
        self,
        k: int,
        selected: list[str],
        o: RoundOutcome,
        wall: float,
        duration: float,
        tb: ScalarWriter,
    ) -> None:
        """Round ``k``'s model made durable and recorded, as the driver commits a round."""
        store, log, p = self.store, self.log, self.p
        state_path = store.write_state(
            k, {"excluded": json.dumps(self.excluded, sort_keys=True)} if self.excluded else {}
        )
        path = store.write_model(k, o.model)
        server_metrics: dict[str, float] = {}
        if self.evaluate is not None:
            hook = self.ctx.spec.server.evaluate
            raw = call_hook("evaluate", hook, self.evaluate, o.model, k)
            if raw is not None and not isinstance(raw, Mapping):
                raise JobFailedError(f"server.evaluate hook {hook!r} must return a dict of numbers")
            server_metrics = finite_metrics(
                raw, source=f"server.evaluate {hook!r}", log=log, round=k
            )
        site_metrics = {
            r.site: finite_metrics(r.metrics, source=r.site, log=log, round=k) for r in o.results
        }
        aggregated = weighted_metrics(o.results, site_metrics, log=log, round=k)
        num_examples = sum(r.num_examples for r in o.results)
        store.append_metrics(
            {
                "round": k,
                "started": round(wall, 3),
                "num_examples": num_examples,
                "sites": site_metrics,
                "aggregated": aggregated,
                "server": server_metrics,
                "duration_s": round(duration, 3),
                "missing": [s for s in selected if s not in o.survivors],
                "secagg": {
                    "advertised": o.advertised,
                    "signed": o.signed,
                    "shared": o.shared,
                    "survivors": o.survivors,
                    "dropped": sorted(set(o.shared) - set(o.survivors)),
                    "refused": o.refused,
                    "inconsistent": o.inconsistent,
                    "reported": o.reported,
                    "excluded": sorted(self.excluded),
                },
            }
        )
        scalars = {f"server/{m}": v for m, v in server_metrics.items()}
        scalars.update({f"aggregated/{m}": v for m, v in aggregated.items()})
        scalars["round/num_examples"] = float(num_examples)
        scalars["round/duration_s"] = duration
        scalars["round/survivors"] = float(len(o.survivors))
        tb.add_scalars(scalars, step=k)
        store.save_checkpoint(k, path, state_path)
        if p.keep_models:
            store.prune_models(keep=p.keep_models, latest=k)
        log.info(
            "round %d/%d done (secure): %d/%d site(s) summed, %d examples, %.2fs%s",
            k,
            p.num_rounds,
            len(o.survivors),
            len(selected),
            num_examples,
            duration,
            "".join(f", {m}={v:.4g}" for m, v in server_metrics.items()),
        )
        self.ctx.comm.report(
            round=k,
            total_rounds=p.num_rounds,
            status="round_done",
            num_examples=num_examples,
            sites={s: ("ok" if s in o.survivors else "missing") for s in selected},
            metrics=server_metrics or aggregated,
            duration_s=duration,
        )
