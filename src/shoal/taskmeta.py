"""What travels beside the weights, in either direction, and its bounds.

A task has a name (``FLModel.task``): :data:`TRAIN` (train on the model,
send the new weights), :data:`VALIDATE` (evaluate the model on local data,
send metrics and ``num_examples``, no weights) or :data:`SUBMIT_MODEL` (send
this site's own local model); docs/client-api.md has the contract. The
stages of secure aggregation (:data:`SECAGG_STAGES`) are answered by the
Client API itself.

Down, a task's meta holds the round (``task``, ``round``, ``current_round``,
``total_rounds``, ``site``: the names in :data:`RESERVED_TASK_META`), the
job's ``client.config`` and whatever a workflow adds. Up, a result carries
the site's ``FLModel.meta`` (JSON scalars, bounded by :func:`check_result_meta`),
its ``params_type`` and, beside the weights, named *extra* arrays (control
variates, masks)::

    arrays = join_extras(params, {"c_delta/w": c})   # one payload on the wire
    params, extras = split_extras(arrays)            # two views at the server

Extras ride in the same safetensors payload as the weights, each name behind
:data:`EXTRAS_PREFIX`: one transfer, one checksum, one transfer slot, and
every size bound the weights have. The workflow sees them apart
(``TaskResult.arrays()`` / ``TaskResult.extras()``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from shoal.errors import ConfigError

__all__ = [
    "EXTRAS_PREFIX",
    "MAX_RESULT_META_BYTES",
    "MAX_RESULT_META_KEYS",
    "PARAMS_TYPES",
    "RESERVED_TASK_META",
    "SECAGG_MESSAGE",
    "SECAGG_SETUP",
    "SECAGG_SHARE",
    "SECAGG_STAGES",
    "SECAGG_UNMASK",
    "SUBMIT_MODEL",
    "TASK_NAMES",
    "TRAIN",
    "VALIDATE",
    "check_params_type",
    "check_result_meta",
    "join_extras",
    "split_extras",
]

#: Train on the task's model, send the new weights (and metrics, num_examples).
TRAIN = "train"
#: Evaluate the task's model on local data; send metrics and num_examples, no weights.
VALIDATE = "validate"
#: Send this site's own local model (its best or final one).
SUBMIT_MODEL = "submit_model"
#: The stages of a secure-aggregation round other than ``train``
#: (``shoal.workflows.secagg``): the Client API answers them itself, the
#: script never sees them.
SECAGG_SETUP = "secagg_setup"
SECAGG_SHARE = "secagg_share"
SECAGG_UNMASK = "secagg_unmask"
SECAGG_STAGES = (SECAGG_SETUP, SECAGG_SHARE, SECAGG_UNMASK)
#: The extra array a secure-aggregation message travels as, down and up.
SECAGG_MESSAGE = "secagg/message"
#: The task names shoal's workflows send.
TASK_NAMES = (TRAIN, VALIDATE, SUBMIT_MODEL, *SECAGG_STAGES)

#: Task meta keys the runtime sets; ``client.config`` may not use them.
RESERVED_TASK_META = frozenset({"task", "round", "current_round", "total_rounds", "site"})
#: Largest ``FLModel.meta`` of a result, as compact JSON.
MAX_RESULT_META_BYTES = 64 * 1024
#: Most keys in a result's meta.
MAX_RESULT_META_KEYS = 256
#: Longest key of a result's meta.
_MAX_KEY_CHARS = 128
#: What a result's ``params`` are: the site's weights, or its weights minus
#: the global model it was sent ("diff": what DP and compression work on).
PARAMS_TYPES = ("full", "diff")
#: Names of extra arrays start with this inside the payload.
EXTRAS_PREFIX = "__extras__/"
_MAX_INT = 2**63 - 1


def check_result_meta(meta: Any) -> dict[str, Any]:
    """``meta`` as a plain dict of JSON scalars, or ConfigError naming the problem.

    Keys are strings of 1..128 characters; values are ``str``, ``int``
    (64-bit), finite ``float``, ``bool`` or ``None``; at most
    :data:`MAX_RESULT_META_KEYS` keys and :data:`MAX_RESULT_META_BYTES` as JSON.
    Nested values are refused: what a site sends up is read by the server's
    workflow, and scalars are what it can check.
    """
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise ConfigError(f"FLModel.meta must be a mapping, got {type(meta).__name__}")
    if len(meta) > MAX_RESULT_META_KEYS:
        raise ConfigError(
            f"FLModel.meta has {len(meta)} keys, more than the limit of {MAX_RESULT_META_KEYS}"
        )
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if not isinstance(key, str) or not 0 < len(key) <= _MAX_KEY_CHARS:
            raise ConfigError(
                f"FLModel.meta: key {str(key)[:40]!r} must be a string of 1..{_MAX_KEY_CHARS} "
                "characters"
            )
        if isinstance(value, bool) or value is None or isinstance(value, str):
            out[key] = value
        elif isinstance(value, int):
            if abs(value) > _MAX_INT:
                raise ConfigError(f"FLModel.meta[{key!r}]: integer out of the 64-bit range")
            out[key] = int(value)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ConfigError(f"FLModel.meta[{key!r}]: {value!r} is not a finite number")
            out[key] = float(value)
        else:
            raise ConfigError(
                f"FLModel.meta[{key!r}]: {type(value).__name__} is not a JSON scalar "
                "(str, int, float, bool or None); send arrays as FLModel.extras"
            )
    size = len(json.dumps(out, separators=(",", ":")))
    if size > MAX_RESULT_META_BYTES:
        raise ConfigError(
            f"FLModel.meta is {size} bytes as JSON, more than the limit of {MAX_RESULT_META_BYTES}"
        )
    return out


def check_params_type(value: Any) -> str:
    """``"full"`` or ``"diff"``; ConfigError for anything else."""
    if value not in PARAMS_TYPES:
        raise ConfigError(f"FLModel.params_type must be 'full' or 'diff', got {value!r}")
    return str(value)


def join_extras(params: Mapping[str, Any], extras: Mapping[str, Any]) -> dict[str, Any]:
    """The weights and the extras as one mapping of names to arrays (no copies)."""
    if not extras:
        return dict(params)
    for name in params:
        if isinstance(name, str) and name.startswith(EXTRAS_PREFIX):
            raise ConfigError(
                f"parameter {name!r}: names starting with {EXTRAS_PREFIX!r} are reserved"
            )
    joined = dict(params)
    for name, value in extras.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"FLModel.extras: {name!r} is not a valid array name")
        joined[EXTRAS_PREFIX + name] = value
    return joined


def split_extras(arrays: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(params, extras)`` from a payload's arrays (views, no copies)."""
    params: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    cut = len(EXTRAS_PREFIX)
    for name, value in arrays.items():
        if name.startswith(EXTRAS_PREFIX):
            extras[name[cut:]] = value
        else:
            params[name] = value
    return params, extras
