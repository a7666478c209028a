"""One round of secure aggregation over the Communicator: four tasks.

    stage          task             down (the task's file)              up (each result)
    0 keys         secagg_setup     the round's parameters              two public keys (+ auth)
    1 shares       secagg_share     every site's keys                   shares, encrypted + committed
    2 masking      train            the global model + who shared and   the masked, quantized update
                                    the ciphertexts
    3 unmasking    secagg_unmask    who survived, who dropped           shares of seeds / of keys

Each stage's message is the extra array ``secagg/message`` (JSON) beside
the weights (``shoal.privacy.secagg.messages``); the protocol is
``shoal.privacy.secagg``. A site that does not answer a stage in time,
answers with a refusal, or sends a message that breaks the protocol, takes
no further part in the round: before stage 2 it is simply left out; after
it, it is a dropped site, whose masks the survivors' shares remove. The
masked updates are folded into a running sum as they arrive (memory: one
model in the ring's dtype); the files stay the runtime's and are removed
after the gather, as FedAvg's are.
"""

from __future__ import annotations

import logging
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shoal.arrays import is_floating, load_arrays, save_arrays
from shoal.errors import ArrayFormatError, JobFailedError
from shoal.privacy.secagg import (
    MESSAGE,
    WEIGHT,
    MaskedSum,
    ProtocolError,
    RoundConfig,
    ServerRound,
    mean_update,
    remove_masks,
)
from shoal.privacy.secagg.messages import decode, encode
from shoal.taskmeta import SECAGG_SETUP, SECAGG_SHARE, SECAGG_UNMASK, TRAIN, join_extras
from shoal.workflows.api import TaskResult, WorkflowContext
from shoal.workflows.results import check_num_examples, without_arrays

__all__ = ["RoundOutcome", "StageLimits", "run_secagg_round"]


@dataclass(frozen=True)
class StageLimits:
    """What bounds a round's tasks."""

    #: Seconds the training stage waits for masked updates.
    train_timeout_s: float
    #: Seconds each other stage waits for answers.
    stage_timeout_s: float
    max_num_examples: int
    min_clients: int


@dataclass
class RoundOutcome:
    """What a secure round leaves behind."""

    #: The new global model.
    model: dict[str, np.ndarray]
    #: The results whose masked update is in the sum (no arrays kept).
    results: list[TaskResult]
    #: U1..U3: who advertised, shared, and sent a masked update.
    advertised: list[str] = field(default_factory=list)
    #: The sites whose keys came signed (checked by their peers, not here).
    signed: list[str] = field(default_factory=list)
    shared: list[str] = field(default_factory=list)
    survivors: list[str] = field(default_factory=list)
    #: Sites that revealed a share their dealer never committed to.
    inconsistent: dict[str, str] = field(default_factory=dict)
    #: holder -> dealer -> why the holder found the dealer's shares bad.
    reported: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Sites that refused or broke a stage, and why.
    refused: dict[str, str] = field(default_factory=dict)


class _Round:
    def __init__(
        self,
        ctx: WorkflowContext,
        config: RoundConfig,
        limits: StageLimits,
        model_path: Path,
        total_rounds: int,
    ) -> None:
        self.ctx, self.config, self.limits = ctx, config, limits
        self.log: logging.Logger = ctx.logger
        self.k = config.round
        self.model_path = model_path
        self.total_rounds = total_rounds
        self.server = ServerRound(config, job_id=ctx.job_id)
        self.folder = ctx.run_dir / "secagg"
        self.refused: dict[str, str] = {}

    def _meta(self, **extra: Any) -> dict[str, Any]:
        return self.ctx.task_meta(current_round=self.k, total_rounds=self.total_rounds, **extra)

    def _refuse(self, site: str, stage: str, why: str) -> None:
        self.refused[site] = f"{stage}: {why}"
        self.log.warning("round %d: %s takes no further part (%s): %s", self.k, site, stage, why)

    def _message(self, result: TaskResult, stage: str) -> dict[str, Any] | None:
        """A result's message; None (the site refused) when it carries an error."""
        extras = result.extras()
        if MESSAGE not in extras:
            raise ProtocolError("the answer carries no secure-aggregation message")
        doc = decode(extras[MESSAGE], f"{result.site}'s answer")
        if "error" in doc:
            self._refuse(result.site, stage, f"the site refused: {str(doc['error'])[:300]}")
            return None
        return doc

    def stage(
        self, task: str, sites: Sequence[str], doc: Mapping[str, Any]
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Send ``doc`` to ``sites`` as ``task``; yield each valid answer's message."""
        path = self.folder / f"{task}.safetensors"
        save_arrays(path, join_extras({}, {MESSAGE: encode(doc)}), durable=False)
        task_id = self.ctx.comm.scatter(
            task=task, round=self.k, weights_path=path, sites=list(sites), meta=self._meta()
        )
        asked, seen = set(sites), set()
        for result in self.ctx.comm.gather(task_id, timeout=self.limits.stage_timeout_s):
            if result.site not in asked or result.site in seen or result.round != self.k:
                self.log.warning("round %d: ignoring an unexpected %s answer", self.k, task)
                continue
            seen.add(result.site)
            try:
                message = self._message(result, task)
            except ProtocolError as exc:
                self._refuse(result.site, task, str(exc))
                continue
            if message is not None:
                yield result.site, message
        for site in sorted(asked - seen):
            self._refuse(
                site, task, f"no answer (it left, or none in {self.limits.stage_timeout_s:g} s)"
            )

    def run(self) -> RoundOutcome:
        config, server = self.config, self.server
        self.ctx.comm.report(
            round=self.k,
            total_rounds=self.total_rounds,
            status="secagg: keys",
            sites=list(config.sites),
        )
        for site, doc in self.stage(SECAGG_SETUP, config.sites, server.setup_doc()):
            self._apply(site, SECAGG_SETUP, server.add_advertisement, doc)
        self._need(server.adverts, "advertised keys")
        for site, doc in self.stage(SECAGG_SHARE, sorted(server.adverts), server.keys_doc()):
            self._apply(site, SECAGG_SHARE, server.add_shares, doc)
        self._need(server.shared, "dealt shares")
        total, results = self._masked_updates()
        self._need(total.sites, "sent a masked update")
        for site, doc in self.stage(SECAGG_UNMASK, total.sites, server.unmask_doc(total.sites)):
            self._apply(site, SECAGG_UNMASK, server.add_reveal, doc)
        try:
            remove_masks(total.arrays, total.weight, server.seeds())
            model = mean_update(load_arrays(self.model_path, mmap=True), total, config)
        except ProtocolError as exc:
            raise JobFailedError(f"round {self.k}: the sum cannot be unmasked: {exc}") from None
        return RoundOutcome(
            model=model,
            results=results,
            advertised=sorted(server.adverts),
            signed=sorted(s for s, a in server.adverts.items() if "auth" in a),
            shared=server.shared,
            survivors=list(server.survivors),
            inconsistent=dict(server.inconsistent),
            reported=dict(server.reported),
            refused=dict(self.refused),
        )

    def _apply(self, site: str, stage: str, step: Any, doc: Mapping[str, Any]) -> None:
        try:
            step(site, doc)
        except ProtocolError as exc:
            self._refuse(site, stage, str(exc))

    def _need(self, sites: Sequence[str] | Mapping[str, Any], what: str) -> None:
        need = max(self.config.threshold, self.limits.min_clients)
        if len(sites) < need:
            missing = [f"{s} ({self.refused[s]})" for s in sorted(self.refused)]
            raise JobFailedError(
                f"round {self.k}: only {len(sites)} site(s) {what}, {need} needed "
                f"(threshold {self.config.threshold}, min_clients {self.limits.min_clients}); "
                f"missing: {', '.join(missing) or 'none'}"
            )

    def _masked_updates(self) -> tuple[MaskedSum, list[TaskResult]]:
        """Stage 2: the global model and the masking message as a ``train``
        task to the sites that shared; each masked update folded as it comes."""
        server, log = self.server, self.log
        model = load_arrays(self.model_path, mmap=True)
        specs = {n: a.shape for n, a in model.items() if is_floating(a.dtype)}
        path = self.folder / "train.safetensors"
        save_arrays(path, join_extras(model, {MESSAGE: encode(server.mask_doc())}), durable=False)
        del model
        shared = server.shared
        self.ctx.comm.report(
            round=self.k, total_rounds=self.total_rounds, status="training", sites=shared
        )
        task_id = self.ctx.comm.scatter(
            task=TRAIN, round=self.k, weights_path=path, sites=shared, meta=self._meta(secagg=True)
        )
        log.info(
            "round %d/%d: masking task %s sent to %d site(s): %s",
            self.k,
            self.total_rounds,
            task_id,
            len(shared),
            ", ".join(shared),
        )
        total = MaskedSum(specs, self.config.ring)
        results: list[TaskResult] = []
        for result in self.ctx.comm.gather(task_id, timeout=self.limits.train_timeout_s):
            site = result.site
            if site not in shared or site in total.sites or result.round != self.k:
                log.warning("round %d: ignoring an unexpected result from %s", self.k, site)
                continue
            try:
                extras = result.extras()
                if MESSAGE in extras:
                    self._message(result, TRAIN)  # a refusal: logged there
                    continue
                check_num_examples(result.num_examples, self.limits.max_num_examples)
                if WEIGHT not in extras:
                    raise ProtocolError("the masked update carries no weight")
                total.add(site, result.arrays(), extras[WEIGHT])
            except (ProtocolError, ArrayFormatError) as exc:
                self._refuse(site, TRAIN, str(exc))
                continue
            results.append(without_arrays(result))
            log.info("round %d: masked update from %s folded in", self.k, site)
        for site in shared:
            if site not in total.sites and site not in self.refused:
                self._refuse(
                    site,
                    TRAIN,
                    f"no update (it left, or none in {self.limits.train_timeout_s:g} s)",
                )
        return total, results


def run_secagg_round(
    ctx: WorkflowContext,
    *,
    round: int,
    sites: Sequence[str],
    model_path: Path,
    total_rounds: int,
    limits: StageLimits,
    degree: int,
    threshold: int,
    bits: int,
    clip_range: float,
    max_weight: int,
) -> RoundOutcome:
    """Round ``round`` with ``sites`` from the model at ``model_path``;
    JobFailedError when too few sites remain at a stage or the sum cannot be
    unmasked. ``threshold`` 0: more than half of each site's holders."""
    n = len(set(sites))
    holders = (n - 1 if degree == 0 or degree >= n - 1 else degree) + 1
    config = RoundConfig(
        round=round,
        sites=tuple(sorted(sites)),
        graph_seed=secrets.randbits(63),
        degree=degree,
        threshold=threshold or holders // 2 + 1,
        bits=bits,
        clip_range=clip_range,
        max_weight=max_weight,
    )
    try:
        config.check()
    except ProtocolError as exc:
        raise JobFailedError(f"round {round}: {exc}") from None
    one = _Round(ctx, config, limits, model_path, total_rounds)
    try:
        return one.run()
    finally:
        # The tasks' files (the masking task is a copy of the model): not
        # part of the job's results. A transfer still reading one keeps it open.
        shutil.rmtree(one.folder, ignore_errors=True)
