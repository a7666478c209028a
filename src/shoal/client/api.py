"""The Client API: a few lines in an ordinary training script.

    import shoal.client as fl

    fl.init()
    while fl.is_running():
        model = fl.receive()                 # global weights for this round
        set_weights(net, model.params)
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
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from shoal.errors import ConfigError, ShoalError

__all__ = [
    "ClientBackend",
    "FLModel",
    "get_site_name",
    "get_job_id",
    "init",
    "is_running",
    "receive",
    "send",
    "system_info",
    "use_backend",
]

#: Environment variable through which a site daemon hands a job worker its
#: configuration (a JSON file path); see ``shoal.client.worker``.
WORKER_CONFIG_ENV = "SHOAL_WORKER_CONFIG"


@dataclass
class FLModel:
    """Weights plus what travels with them, in either direction.

    ``params`` maps stable names to arrays. From the server, ``current_round``
    and ``total_rounds`` say where the job is. To the server, ``num_examples``
    weights this site's contribution in the average and ``metrics`` are
    stored with the job (and written to TensorBoard).
    """

    params: Mapping[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    num_examples: int = 0
    current_round: int | None = None
    total_rounds: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class ClientBackend(Protocol):
    """What the Client API needs from whatever runs the script."""

    site_name: str
    job_id: str
    #: This site's position among the job's sites (sorted by name) and their
    #: count: lets a script pick its own shard of a shared demo data set.
    site_index: int
    num_sites: int

    def next_task(self) -> FLModel | None:
        """Block until the next task arrives; ``None`` when the job is over."""

    def send(self, model: FLModel) -> None:
        """Return this round's result to the server."""

    def close(self) -> None:
        """Release connections; called once when the script ends."""


class _State:
    def __init__(self, backend: ClientBackend) -> None:
        self.backend = backend
        self.pending: FLModel | None = None
        self.done = False
        self.awaiting_send = False


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
    if state.pending is None:
        state.pending = state.backend.next_task()
        if state.pending is None:
            state.done = True
            state.backend.close()
            return False
    return True


def receive() -> FLModel:
    """The next task's global model. Raises once the job is over."""
    state = _require()
    if not is_running():
        raise ShoalError("the job is over: no more tasks (check is_running() first)")
    assert state.pending is not None
    model, state.pending = state.pending, None
    state.awaiting_send = True
    return model


def send(model: FLModel) -> None:
    """Send this round's result: weights, metrics and the number of examples."""
    state = _require()
    if not state.awaiting_send:
        raise ShoalError("send() without a task: call receive() first")
    if model.num_examples < 0:
        raise ConfigError(f"FLModel.num_examples must be >= 0, got {model.num_examples}")
    state.backend.send(model)
    state.awaiting_send = False


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
