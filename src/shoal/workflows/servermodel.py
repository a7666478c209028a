"""The server's model in a workflow process: the ``server.*`` hooks of job.yml.

Every workflow that starts from a model (the round driver, FedBuff, cyclic,
evaluation) gets it the same way: ``server.model`` (a framework model, whose
adapter also writes the native final model) or ``server.initial_weights`` (a
dict of arrays), checked finite before any site sees it. A hook that raises
fails the job with the hook named.

    sm = server_model_of(ctx)
    params = initial_params(ctx, sm, "fedavg")
    ...
    save_native(store, sm, final_params)   # global_final.<suffix>, 0600
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from shoal.arrays import check_finite
from shoal.errors import ArrayFormatError, JobFailedError, JobValidationError, ShoalError
from shoal.workflows.api import WorkflowContext
from shoal.workflows.hooks import load_attr
from shoal.workflows.store import RoundStore

__all__ = ["ServerModel", "call_hook", "initial_params", "save_native", "server_model_of"]


def call_hook(kind: str, spec: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except ShoalError:
        raise
    except Exception as exc:
        raise JobFailedError(
            f"server.{kind} hook {spec!r} raised {type(exc).__name__}: {exc}"
        ) from exc


@dataclass(frozen=True)
class ServerModel:
    """The ``server.model`` hook's model and its framework adapter, if any."""

    model: Any = None
    adapter: Any = None


def server_model_of(ctx: WorkflowContext) -> ServerModel:
    hook = ctx.spec.server.model
    if not hook:
        return ServerModel()
    from shoal.frameworks import adapter_for

    model = call_hook("model", hook, load_attr(ctx.app_dir, hook))
    return ServerModel(model=model, adapter=adapter_for(model))


def initial_params(
    ctx: WorkflowContext, server_model: ServerModel, workflow: str
) -> dict[str, np.ndarray]:
    server = ctx.spec.server
    if server_model.model is not None:
        raw = server_model.adapter.get_weights(server_model.model)
        origin = f"server.model {server.model!r}"
    elif server.initial_weights:
        fn = load_attr(ctx.app_dir, server.initial_weights)
        raw = call_hook("initial_weights", server.initial_weights, fn)
        origin = f"server.initial_weights {server.initial_weights!r}"
    else:
        raise JobValidationError(
            f"job.yml: server: {workflow} needs server.model or server.initial_weights"
        )
    if not isinstance(raw, Mapping) or not raw:
        raise JobFailedError(
            f"{origin} must give a non-empty dict of arrays, got {type(raw).__name__}"
        )
    from shoal.frameworks import as_numpy_params  # a state_dict() of tensors, say

    try:
        raw = as_numpy_params(raw)
    except ArrayFormatError as exc:
        raise JobFailedError(f"{origin}: {exc}") from None
    params = {str(k): np.asarray(v) for k, v in raw.items()}
    try:
        check_finite(params)
    except ArrayFormatError as exc:
        raise JobFailedError(f"{origin}: initial weights are not finite: {exc}") from None
    return params


def save_native(store: RoundStore, server_model: ServerModel, params: Mapping[str, Any]) -> None:
    adapter, model = server_model.adapter, server_model.model
    adapter.set_weights(model, params)
    target = store.final_path(adapter.suffix)
    tmp = target.with_name(f".global_final.tmp{adapter.suffix}")
    adapter.save(model, tmp)
    # Private, as the safetensors models are, whatever the framework wrote.
    os.chmod(tmp, 0o600)
    os.replace(tmp, target)
