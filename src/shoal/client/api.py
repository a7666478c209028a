"""The Client API: a few lines in an ordinary training script.

    import shoal.client as fl

    fl.init()
    while fl.is_running():
        model = fl.receive()                 # global weights for this round
        set_weights(net, model.params)
        if fl.is_evaluate():                 # task "validate": metrics only
            fl.send(fl.FLModel(metrics={"accuracy": ...}, num_examples=len(x_val)))
            continue
        history = net.fit(...)
        fl.send(fl.FLModel(params=get_weights(net),
                           metrics={"accuracy": ...},
                           num_examples=len(x_train)))

The same script runs unchanged under a real site daemon (the worker talks to
the server over mutual TLS) and in ``shoal simulate`` (an in-process backend).
Which backend is used is decided once, by ``init()``.
"""

from __future__ import annotations

import contextvars
import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.client.model import ClientBackend, FLModel
from shoal.errors import ConfigError, ShoalError
from shoal.filters import FilterChain
from shoal.frameworks import as_numpy_params
from shoal.taskmeta import (
    SECAGG_MESSAGE,
    SECAGG_STAGES,
    SUBMIT_MODEL,
    TRAIN,
    VALIDATE,
    check_params_type,
    check_result_meta,
)

if TYPE_CHECKING:
    from shoal.client.secagg import SecAggSite

__all__ = [
    "ClientBackend",
    "FLModel",
    "get_site_name",
    "get_job_id",
    "init",
    "is_evaluate",
    "is_running",
    "is_submit_model",
    "is_train",
    "receive",
    "send",
    "state_dir",
    "system_info",
    "use_backend",
]

#: Environment variable through which a site daemon hands a job worker its
#: configuration (a JSON file path); see ``shoal.client.worker``.
WORKER_CONFIG_ENV = "SHOAL_WORKER_CONFIG"


class _State:
    def __init__(self, backend: ClientBackend) -> None:
        self.backend = backend
        self.pending: FLModel | None = None
        self.done = False
        self.awaiting_send = False
        #: The task being answered (for the result's filters).
        self.task: FLModel | None = None
        #: This site's own trackers (``tracking.site_metrics: site``), once started.
        self.trackers: Any = None
        #: Secure aggregation's state at this site, once a round of it began.
        self.secagg: SecAggSite | None = None

    def secure(self) -> SecAggSite:
        if self.secagg is None:
            # Imported on first use: a script that never takes part in
            # secure aggregation does not load its cryptography.
            from shoal.client.secagg import SecAggSite

            self.secagg = SecAggSite(self.backend)
        return self.secagg


# A contextvar (not a module global) so the simulator can run many sites as
# threads of one process, each with its own backend.
_state: contextvars.ContextVar[_State | None] = contextvars.ContextVar("shoal_client", default=None)
_backend_override: contextvars.ContextVar[ClientBackend | None] = contextvars.ContextVar(
    "shoal_client_backend", default=None
)


def use_backend(backend: ClientBackend) -> contextvars.Token[ClientBackend | None]:
    """Install ``backend`` for the current context (the simulator does this)."""
    return _backend_override.set(backend)


def init() -> None:
    """Connect this script to the job it runs in. Call once, first."""
    if _state.get() is not None:
        return
    backend = _backend_override.get()
    if backend is None:
        config = os.environ.get(WORKER_CONFIG_ENV)
        if not config:
            raise ConfigError(
                "shoal.client.init(): this script is not running under shoal "
                f"({WORKER_CONFIG_ENV} is not set); run it with `shoal simulate JOB` "
                "or submit the job to a federation"
            )
        from shoal.client.worker import GrpcBackend

        backend = GrpcBackend.from_config_file(config)
    _state.set(_State(backend))


def _require() -> _State:
    state = _state.get()
    if state is None:
        raise ShoalError("shoal.client.init() must be called first")
    return state


def is_running() -> bool:
    """True while the job has another task for this site (blocks until it knows)."""
    state = _require()
    if state.done:
        return False
    while state.pending is None:
        task = state.backend.next_task()
        if task is None:
            state.done = True
            if state.trackers is not None:
                state.trackers.close("FINISHED")
            state.backend.close()
            return False
        if (
            state.secagg is not None
            or task.task in SECAGG_STAGES
            or SECAGG_MESSAGE in task.extras
            or getattr(state.backend, "secagg_credential", None) is not None
        ):
            # Secure aggregation's own steps are answered there, never by the script.
            received = state.secure().receive(task)
            if received is None:
                continue
            task = received
        state.pending = _filtered(state.backend, "task_in", task, task)
    return True


def _filtered(backend: ClientBackend, point: str, model: FLModel, task: FLModel) -> FLModel:
    """``model`` through the backend's chain at ``point`` (if it has one);
    ``task`` is the task it answers or is."""
    chain = backend.filters.get(point)
    if not isinstance(chain, FilterChain) or not chain:
        return model
    return chain.apply(
        model,
        job_id=backend.job_id,
        site=backend.site_name,
        round=task.current_round,
        task=task.task,
        # What a result answers: the weights as this site received them
        # (clip and quantize work on the difference).
        reference=task.params if point == "result_out" else None,
    )


def receive() -> FLModel:
    """The next task's global model. Raises once the job is over."""
    state = _require()
    if not is_running():
        raise ShoalError("the job is over: no more tasks (check is_running() first)")
    assert state.pending is not None
    model, state.pending = state.pending, None
    state.awaiting_send = True
    state.task = model
    return model


def _task_name() -> str:
    state = _require()
    task = state.task if state.awaiting_send else state.pending
    if task is None:
        raise ShoalError("no task yet: call is_running() or receive() first")
    return task.task


def is_train() -> bool:
    """Whether the current task is ``"train"``: train on ``task.params``,
    send the new weights. (The current task: the one ``receive()`` returned,
    or before that the one ``is_running()`` found.)"""
    return _task_name() == TRAIN


def is_evaluate() -> bool:
    """Whether the current task is ``"validate"``: evaluate ``task.params`` on
    local data and send ``FLModel(metrics=..., num_examples=n)``, no params."""
    return _task_name() == VALIDATE


def is_submit_model() -> bool:
    """Whether the current task is ``"submit_model"``: send this site's own
    local model (its best or final one)."""
    return _task_name() == SUBMIT_MODEL


def _check_for_task(task: str, model: FLModel) -> None:
    """What each task's result must carry (docs/client-api.md): a script that
    answers a task as if it were another fails here, the task named."""
    if task == VALIDATE:
        if model.params or model.extras:
            raise ConfigError(
                f"send(): the task is {VALIDATE!r} (evaluate the model on local data), and a "
                f"{VALIDATE!r} result carries metrics and num_examples, no weights: this one "
                f"has {len(model.params) + len(model.extras)} array(s). A script that only "
                "trains must check the task first (if fl.is_evaluate(): ...), see "
                "docs/client-api.md"
            )
        if not model.metrics:
            raise ConfigError(f"send(): a {VALIDATE!r} result must carry metrics")
        if model.num_examples <= 0:
            raise ConfigError(
                f"send(): a {VALIDATE!r} result's num_examples (the examples evaluated) "
                f"must be > 0, got {model.num_examples}"
            )
    elif task == SUBMIT_MODEL and not model.params:
        raise ConfigError(
            f"send(): the task is {SUBMIT_MODEL!r}, whose result is this site's local model: "
            "params is empty"
        )


def send(model: FLModel) -> None:
    """Send this round's result: weights, metrics and the number of examples
    (and, optionally, ``meta``, ``extras`` and ``params_type``); for a
    ``"validate"`` task, metrics and the number of examples only.

    The result passes the site's ``result_out`` filters first; what it
    carries is checked here, so a bad value fails in the script, named.
    """
    state = _require()
    if not state.awaiting_send:
        raise ShoalError("send() without a task: call receive() first")
    if model.num_examples < 0:
        raise ConfigError(f"FLModel.num_examples must be >= 0, got {model.num_examples}")
    assert state.task is not None
    # PyTorch tensors (a state_dict()) as numpy arrays, bit for bit: the
    # filters and the wire see arrays only.
    model = dataclasses.replace(
        model, params=as_numpy_params(model.params), extras=as_numpy_params(model.extras)
    )
    _check_for_task(state.task.task, model)
    model = _filtered(state.backend, "result_out", model, state.task)
    if getattr(state.backend, "metrics_private", False):
        # The site's policy: its metrics stay in the federation (no tracker).
        from shoal.observe.tracking import PRIVATE_META

        model = dataclasses.replace(model, meta={**model.meta, PRIVATE_META: True})
    if state.secagg is not None and state.secagg.masking:
        model = state.secagg.masked(model)
    check_result_meta(model.meta)
    check_params_type(model.params_type)
    state.backend.send(model)
    state.awaiting_send = False
    _track(state, model, state.task.current_round)


def _track(state: _State, model: FLModel, round: int | None) -> None:
    """This site's metrics to its own trackers, when the job asks for them
    (``tracking.site_metrics: site``) and the site allows it; never fails the script."""
    tracking = getattr(state.backend, "tracking", None)
    if not tracking or not model.metrics:
        return
    if state.trackers is None:
        from shoal.jobs.spec import parse_tracking
        from shoal.observe.tracking import open_trackers

        backend = state.backend
        base = getattr(backend, "state_dir", None)
        state.trackers = open_trackers(
            parse_tracking(tracking),
            base=Path(base) if base else Path.cwd(),
            job_name=getattr(backend, "job_name", "") or "job",
            job_id=backend.job_id,
            site=backend.site_name,
        )
    state.trackers.add_scalars(dict(model.metrics), step=int(round or 0))


def get_site_name() -> str:
    return _require().backend.site_name


def get_job_id() -> str:
    return _require().backend.job_id


def system_info() -> dict[str, Any]:
    """Site name, job id, and this site's index among the job's sites."""
    b = _require().backend
    return {
        "site_name": b.site_name,
        "job_id": b.job_id,
        "site_index": b.site_index,
        "num_sites": b.num_sites,
    }


def state_dir() -> Path:
    """A folder of this site's own for this job, kept while the job runs.

    What a script writes there is there again for the next round and for a
    worker the site daemon restarts for the same job (after the site itself
    restarted, say): state a site keeps between rounds, such as SCAFFOLD's
    control variate, belongs here, not in the working directory (the job's
    unpacked copy, unpacked afresh on a restart) nor in memory. Under a site
    daemon it is ``jobs/<job id>/state/`` in the site's workspace, removed
    with the job's folder; in ``shoal simulate``, ``site_state/<site>/`` in
    the run folder, one per simulated site. Created on first use.
    """
    backend = _require().backend
    folder = getattr(backend, "state_dir", None)
    if folder is None:
        raise ConfigError(
            f"this site's backend ({type(backend).__name__}) keeps no state folder for the job"
        )
    folder = Path(folder)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder
