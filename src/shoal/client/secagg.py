"""A site's part of secure aggregation, run by the Client API itself.

The training script does not change: ``fl.is_running()`` answers the
protocol's own tasks (``secagg_setup``, ``secagg_share``,
``secagg_unmask``: ``shoal.taskmeta.SECAGG_STAGES``) without the script
seeing them, as it would hand it a ``validate`` task; a ``train`` task of a
SecAgg round reaches the script without the protocol's message; and
``fl.send()`` turns the script's new weights into the masked update, after
the site's ``result_out`` filters ran on them::

    update = new weights - the task's weights     (or params, for params_type "diff")
    sent   = mask(quantize(update * w / max_weight)),  w = min(num_examples, max_weight)

Only the floating arrays are sent (masked, in the ring's integer dtype);
the others keep the global model's value. Metrics, ``num_examples`` and
``meta`` travel in the clear, as in any round. A step the protocol refuses
(a peer's key that does not verify, too few neighbours) is logged and
answered with the reason: the site sits the round out, and its update is
never sent unmasked.

Under a site daemon the backend carries a :class:`~shoal.privacy.secagg.Credential`
(``secagg_credential``) and the project's CA (``ca_pem``): this site's keys
are signed and a peer's are accepted only signed. ``shoal simulate`` has
neither: keys go unsigned (an honest-but-curious server only).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from shoal.arrays import is_floating
from shoal.client.model import ClientBackend, FLModel
from shoal.errors import ConfigError
from shoal.privacy.secagg import MESSAGE, WEIGHT, ProtocolError, RoundConfig, SiteRound
from shoal.privacy.secagg.messages import decode, encode
from shoal.taskmeta import (
    SECAGG_SETUP,
    SECAGG_SHARE,
    SECAGG_STAGES,
    SECAGG_UNMASK,
    SUBMIT_MODEL,
    TRAIN,
)

__all__ = ["SecAggSite"]

log = logging.getLogger("shoal.secagg")


def _answer(doc: Mapping[str, Any]) -> FLModel:
    return FLModel(extras={MESSAGE: encode(doc)})


class SecAggSite:
    """The protocol's state at one site, across the rounds of a job."""

    def __init__(self, backend: ClientBackend) -> None:
        self.backend = backend
        self.round: SiteRound | None = None
        #: The floating arrays of the task being trained (a copy: a script
        #: may train the task's arrays in place), while a masked update is due.
        self._start: dict[str, np.ndarray] | None = None

    @property
    def required(self) -> bool:
        """Whether every weight this site sends must be masked: the site
        daemon gave this job a secure-aggregation credential (it read the
        job's own job.yml), so no task from the server can ask otherwise."""
        return getattr(self.backend, "secagg_credential", None) is not None

    def receive(self, task: FLModel) -> FLModel | None:
        """The task as the script sees it, or ``None`` for one answered here
        (a stage of the protocol, or a masking task this site cannot do)."""
        if task.task in SECAGG_STAGES:
            self.backend.send(self.answer(task))
            return None
        if self.required and (
            task.task == SUBMIT_MODEL or (task.task == TRAIN and MESSAGE not in task.extras)
        ):
            # A server asking a secure-aggregation job's site for its weights
            # in the clear: refused, whatever the server says the job is.
            reason = ProtocolError(
                f"a {task.task!r} task that would send this site's weights unmasked, in a "
                "secure-aggregation job"
            )
            self.backend.send(self.refusal(task, reason))
            return None
        try:
            plain = self.take_train(task)
        except (ProtocolError, ConfigError) as exc:
            self.backend.send(self.refusal(task, exc))
            return None
        return task if plain is None else plain

    def answer(self, task: FLModel) -> FLModel:
        """The answer to a stage task; a refusal names why."""
        try:
            doc = decode(task.extras.get(MESSAGE, np.zeros(0, np.uint8)), task.task)
            if task.task == SECAGG_SETUP:
                self.round = None
                self.round = self._new_round(RoundConfig.from_doc(doc))
                return _answer(self.round.advertise())
            current = self._current(task)
            if task.task == SECAGG_SHARE:
                return _answer(current.share(doc))
            assert task.task == SECAGG_UNMASK
            return _answer(current.reveal(doc))
        except (ProtocolError, ConfigError) as exc:
            log.warning(
                "secure aggregation, round %s: %s sits the round out: %s",
                task.current_round,
                self.backend.site_name,
                exc,
            )
            self.round = None
            return _answer({"error": str(exc)[:500]})

    def _new_round(self, config: RoundConfig) -> SiteRound:
        credential = getattr(self.backend, "secagg_credential", None)
        ca_pem = getattr(self.backend, "ca_pem", None)
        if credential is None:
            log.info(
                "secure aggregation, round %d: keys unsigned (no site credential: "
                "an honest-but-curious server only)",
                config.round,
            )
        return SiteRound(
            config,
            me=self.backend.site_name,
            job_id=self.backend.job_id,
            credential=credential,
            ca_pem=ca_pem,
        )

    def _current(self, task: FLModel) -> SiteRound:
        current = self.round
        if current is None or current.config.round != task.current_round:
            raise ProtocolError(f"no secure-aggregation round {task.current_round} in progress")
        return current

    def take_train(self, task: FLModel) -> FLModel | None:
        """A ``train`` task: as the script sees it (``None``: not a SecAgg
        round's). Starts the masking stage; ProtocolError if it cannot."""
        if task.task != TRAIN or MESSAGE not in task.extras:
            self._start = None
            return None
        doc = decode(task.extras[MESSAGE], "the masking task")
        # No round here (a worker restarted mid-round): ProtocolError, and
        # the update is never sent unmasked.
        current = self._current(task)
        current.begin_masking(doc)
        self._start = {
            n: np.array(a, copy=True)
            for n, a in task.params.items()
            if is_floating(np.asarray(a).dtype)
        }
        extras = {k: v for k, v in task.extras.items() if k != MESSAGE}
        return FLModel(
            params=task.params,
            extras=extras,
            current_round=task.current_round,
            total_rounds=task.total_rounds,
            meta=task.meta,
            task=task.task,
            params_type=task.params_type,
        )

    def refusal(self, task: FLModel, exc: Exception) -> FLModel:
        log.warning(
            "secure aggregation, round %s: %s cannot mask its update and sits the round out: %s",
            task.current_round,
            self.backend.site_name,
            exc,
        )
        self.round, self._start = None, None
        return _answer({"error": str(exc)[:500]})

    @property
    def masking(self) -> bool:
        """Whether the result being sent is a SecAgg round's update."""
        return self._start is not None

    def masked(self, model: FLModel) -> FLModel:
        """``model`` (the script's result, filtered) as the masked update."""
        start, current = self._start, self.round
        assert start is not None and current is not None
        self._start = None
        names = set(start)
        given = {n for n, a in model.params.items() if is_floating(np.asarray(a).dtype)}
        if given != names:
            missing = sorted(names - given) or sorted(given - names)
            raise ConfigError(
                "send(): a secure-aggregation round sums the task's floating arrays; "
                f"the result's differ: {missing[:3]}"
            )
        update: dict[str, np.ndarray] = {}
        for name in sorted(names):
            new = np.asarray(model.params[name])
            if new.shape != start[name].shape:
                raise ConfigError(
                    f"send(): {name!r} has shape {new.shape}, the task's {start[name].shape}"
                )
            update[name] = new if model.params_type == "diff" else new - start[name]
        del start
        weight = min(max(int(model.num_examples), 0), current.config.max_weight)
        masked = current.mask(update, weight=weight)
        if masked.clipped:
            total = sum(a.size for a in update.values())
            log.warning(
                "secure aggregation, round %d: %d of %d coordinates of the update clipped to "
                "+-%g (workflow.clip_range)",
                current.config.round,
                masked.clipped,
                total,
                current.config.clip_range,
            )
        return FLModel(
            params=masked.arrays,
            extras={WEIGHT: masked.weight},
            metrics=model.metrics,
            num_examples=model.num_examples,
            meta=model.meta,
            current_round=model.current_round,
            total_rounds=model.total_rounds,
            task=model.task,
        )
