"""Keras variables under stable, position-based names (``shoal.frameworks.keras``)."""

from __future__ import annotations

from typing import Any

__all__ = ["named_variables"]


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
