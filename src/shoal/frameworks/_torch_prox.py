"""FedProx's proximal term for PyTorch (``shoal.frameworks.torch.proximal_term``)."""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from shoal.client.model import FLModel
from shoal.errors import ArrayFormatError
from shoal.frameworks.proximal import proximal_source

__all__ = ["proximal_term"]


@dataclass
class _Anchor:
    """A round's global weights on the model's devices, paired with its parameters."""

    #: The mapping they came from: the same object means the same round.
    source: Mapping[str, Any]
    pairs: list[tuple[torch.nn.Parameter, torch.Tensor]]


# Per module, the last round's anchor; gone with the module.
_ANCHORS: weakref.WeakKeyDictionary[torch.nn.Module, _Anchor] = weakref.WeakKeyDictionary()


def _global_tensor(value: Any, like: torch.Tensor, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        out = value.detach().to(device=like.device, dtype=like.dtype, copy=True)
    else:
        arr = np.asarray(value)
        if arr.dtype.kind != "f":  # bfloat16 (ml_dtypes): torch reads it as float32
            arr = arr.astype(np.float32)
        out = torch.tensor(arr, device=like.device).to(like.dtype)
    if out.shape != like.shape:
        raise ArrayFormatError(
            f"proximal_term: {name!r} has shape {tuple(out.shape)} in the global weights, "
            f"{tuple(like.shape)} in the model"
        )
    return out


def _anchor(model: torch.nn.Module, params: Mapping[str, Any]) -> _Anchor:
    anchor = _ANCHORS.get(model)
    if anchor is not None and anchor.source is params:
        return anchor
    pairs = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if name not in params:
                raise ArrayFormatError(
                    f"proximal_term: the global weights have no {name!r} "
                    "(a trainable parameter of the model)"
                )
            pairs.append((p, _global_tensor(params[name], p, name)))
    anchor = _ANCHORS[model] = _Anchor(source=params, pairs=pairs)
    return anchor


def proximal_term(
    model: torch.nn.Module,
    global_params: FLModel | Mapping[str, Any],
    mu: float | None = None,
) -> torch.Tensor:
    """FedProx's ``(mu / 2) * sum ||w - w_global||**2`` over ``model``'s
    trainable parameters, a scalar tensor to add to the loss::

        task = fl.receive()
        set_weights(model, task.params)
        for x, y in loader:
            loss = loss_fn(model(x), y) + proximal_term(model, task)
            ...

    ``global_params`` is the task (``mu`` then defaults to the
    ``fedprox_mu`` job.yml's ``mu`` put in its meta) or its weights (then
    pass ``mu``). The global weights are copied onto each parameter's device
    and dtype once per round (the first call that sees a new task's weights),
    not per batch, and held until the next round's; its gradient with respect
    to ``w`` is ``mu * (w - w_global)``. Parameters with
    ``requires_grad=False`` (frozen layers) and buffers (batch-norm
    statistics) take no part. ArrayFormatError names a trainable parameter
    the global weights lack or shape differently.
    """
    source = proximal_source(global_params, mu)
    anchor = _anchor(model, source.params)
    total: torch.Tensor | None = None
    for p, g in anchor.pairs:
        term = (p - g).pow(2).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return total * (source.mu / 2)
