"""Keras weights as ``{stable name: numpy array}``.

Names come from positions, not from Keras's layer names: Keras numbers layers
per process (``dense``, ``dense_1``, ... ``dense_7``), so the same model built
on two sites, or twice in one process, gets different layer names. Here the
``j``-th weight of the ``i``-th entry of ``model.layers`` is called
``layers.{i}.{j}.{variable name}``, e.g. ``layers.1.0.kernel`` and
``layers.1.1.bias`` for a ``Flatten -> Dense`` model. Every weight is
federated, trainable or not (e.g. batch-norm moving statistics); optimizer
state and random-seed state are not.

    from shoal.frameworks.keras import get_weights, set_weights

    params = get_weights(model)        # {"layers.1.0.kernel": array(784, 128), ...}
    set_weights(model, params)

Needs Keras (``pip install 'shoal[tf]'``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from shoal.errors import ArrayFormatError, ConfigError

try:
    import keras  # noqa: F401 - imported to fail early with a clear message
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ConfigError(
        f"shoal.frameworks.keras needs Keras/TensorFlow ({exc}); install shoal[tf]: "
        "pip install 'shoal[tf]'"
    ) from exc

__all__ = ["KerasAdapter", "get_weights", "named_variables", "save", "set_weights"]

logger = logging.getLogger(__name__)

# Shown in error messages; more names than this are summarised by a count.
_MAX_LISTED = 5


def _short_name(variable: Any) -> str:
    # Keras 3 names a variable "kernel"; tf_keras (Keras 2) "dense_3/kernel:0".
    name = str(getattr(variable, "name", "") or "var")
    return name.rsplit("/", 1)[-1].split(":", 1)[0]


def named_variables(model: Any) -> dict[str, Any]:
    """``{stable name: Keras variable}`` for every weight of ``model``, in model order.

    Weights not owned by any entry of ``model.layers`` (rare: variables created
    directly on a subclassed model) are named ``extra.{k}.{variable name}``.
    """
    out: dict[str, Any] = {}
    seen: set[int] = set()
    for i, layer in enumerate(getattr(model, "layers", ())):
        for j, variable in enumerate(layer.weights):
            if id(variable) in seen:  # a layer shared between two positions
                continue
            seen.add(id(variable))
            out[f"layers.{i}.{j}.{_short_name(variable)}"] = variable
    extra = [v for v in model.weights if id(v) not in seen]
    for k, variable in enumerate(extra):
        out[f"extra.{k}.{_short_name(variable)}"] = variable
    return out


def _numpy_dtype(variable: Any) -> np.dtype[Any]:
    dtype = variable.dtype
    # tf_keras variables carry a tf.DType; Keras 3 a string such as "float32".
    return np.dtype(getattr(dtype, "as_numpy_dtype", dtype))


def get_weights(model: Any) -> dict[str, np.ndarray]:
    """Every weight of ``model`` as a fresh numpy array under its stable name."""
    variables = named_variables(model)
    if not variables:
        logger.debug("model %s has no weights (is it built?)", type(model).__name__)
    return {name: np.array(v.numpy()) for name, v in variables.items()}


def _listed(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def set_weights(model: Any, params: Mapping[str, np.ndarray]) -> None:
    """Load ``params`` (names from :func:`get_weights`) into ``model``.

    Every weight of the model must be given, with its exact shape; nothing is
    assigned unless all of them match. Values are cast to each variable's dtype.
    """
    variables = named_variables(model)
    if not variables and params:
        raise ArrayFormatError(
            f"model {type(model).__name__} has no weights yet: build it (give it an "
            "Input or call it once) before setting weights"
        )
    missing = [n for n in variables if n not in params]
    unexpected = [n for n in params if n not in variables]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_listed(missing)}")
        if unexpected:
            parts.append(f"unexpected {_listed(unexpected)}")
        raise ArrayFormatError(
            f"weights do not match the model ({'; '.join(parts)}); the model has "
            f"{len(variables)} weights named like {next(iter(variables), '?')!r}"
        )
    values: list[tuple[Any, np.ndarray]] = []
    for name, variable in variables.items():
        value = np.asarray(params[name])
        shape = tuple(int(d) for d in variable.shape)
        if value.shape != shape:
            raise ArrayFormatError(
                f"weight {name!r}: shape {value.shape} differs from the model's {shape}"
            )
        values.append((variable, value.astype(_numpy_dtype(variable), copy=False)))
    for variable, value in values:
        variable.assign(value)


def save(model: Any, path: Path) -> None:
    """Save ``model`` in Keras's own format (``.keras``) at ``path``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    model.save(str(path))


class KerasAdapter:
    """:class:`shoal.frameworks.FrameworkAdapter` for Keras models."""

    name = "keras"
    suffix = ".keras"

    def get_weights(self, model: Any) -> dict[str, np.ndarray]:
        return get_weights(model)

    def set_weights(self, model: Any, params: Mapping[str, np.ndarray]) -> None:
        set_weights(model, params)

    def save(self, model: Any, path: Path) -> None:
        save(model, path)
