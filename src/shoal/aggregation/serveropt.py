"""Server optimizers: one step of the global model from a round's aggregate.

The FedOpt family (Reddi et al., "Adaptive Federated Optimization", ICLR
2021, Algorithm 2) treats ``delta = aggregate - old`` (the mean of the sites'
model deltas) as a pseudo-gradient and moves the global model with a server
optimizer that keeps state across rounds::

    m <- beta1 * m + (1 - beta1) * delta                   # every adaptive rule
    v <- v + delta**2                                      # adagrad
    v <- beta2 * v + (1 - beta2) * delta**2                # adam
    v <- v - (1 - beta2) * delta**2 * sign(v - delta**2)   # yogi
    x <- old + lr * m / (sqrt(v) + tau)

with ``m`` starting at 0 and ``v`` at ``tau**2`` (the paper's ``v_{-1} >=
tau**2``), and no bias correction (the paper uses none; Flower's FedAdam
does). Server momentum (FedAvgM, Hsu et al. 2019) is
``m <- beta * m + delta``, ``x <- old + lr * m``.

Each step works in place: the new model is written over ``aggregate`` and
``m``/``v`` are updated where they are, slab by slab through two scratch
slabs, so a step costs no memory beyond the model, its state and ~8 MiB.
Arithmetic is in the state's dtype: the model's own, float32 for the
half-precision floats (``state_dtype``), whose squares underflow in 11 or 8
bits. Over- and underflow are left to the caller's finiteness check (the
round driver refuses a model that is not finite)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from shoal.arrays import is_floating

__all__ = ["ADAPTIVE_RULES", "Scratch", "adaptive_step", "momentum_step", "state_dtype"]

#: The adaptive rules of Reddi et al.'s Algorithm 2.
ADAPTIVE_RULES = ("adagrad", "adam", "yogi")
Rule = Literal["adagrad", "adam", "yogi"]

# Elements per slab: temporaries stay at 2 slabs whatever the layer's size.
_SLAB = 1 << 20


def state_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype of an optimizer's state (and arithmetic) for a ``dtype`` array."""
    if is_floating(dtype) and dtype.itemsize < 4:
        return np.dtype(np.float32)
    return np.dtype(dtype)


class Scratch:
    """Two slabs per dtype, reused by every array of a step."""

    def __init__(self) -> None:
        self._bufs: dict[np.dtype[Any], tuple[np.ndarray, np.ndarray]] = {}

    def get(self, dtype: np.dtype[Any], n: int) -> tuple[np.ndarray, np.ndarray]:
        bufs = self._bufs.get(dtype)
        if bufs is None or bufs[0].shape[0] < n:
            size = min(max(n, 1), _SLAB)
            bufs = self._bufs[dtype] = (np.empty(size, dtype), np.empty(size, dtype))
        return bufs[0][:n], bufs[1][:n]


def _slabs(*arrays: np.ndarray) -> Any:
    """Matching flat slabs of ``arrays`` (all of one shape)."""
    flat = [np.asarray(a).reshape(-1) for a in arrays]
    for i in range(0, flat[0].shape[0], _SLAB):
        yield tuple(f[i : i + _SLAB] for f in flat)


def momentum_step(
    old: np.ndarray,
    aggregate: np.ndarray,
    m: np.ndarray,
    *,
    lr: float,
    beta: float,
    scratch: Scratch,
) -> None:
    """FedAvgM: ``m <- beta * m + (aggregate - old)``, ``aggregate <- old + lr * m``."""
    dtype = m.dtype
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        for o, a, mm in _slabs(old, aggregate, m):
            s1, _ = scratch.get(dtype, a.shape[0])
            np.subtract(a, o, out=s1, dtype=dtype)
            mm *= dtype.type(beta)
            mm += s1
            np.multiply(mm, dtype.type(lr), out=s1)
            np.add(s1, o, out=s1, dtype=dtype)
            np.copyto(a, s1, casting="unsafe")


def adaptive_step(
    old: np.ndarray,
    aggregate: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    *,
    rule: Rule,
    lr: float,
    beta1: float,
    beta2: float,
    tau: float,
    scratch: Scratch,
) -> None:
    """FedAdagrad, FedAdam or FedYogi (``rule``): ``m``, ``v`` and then the
    model (written over ``aggregate``), as in the module docstring."""
    if rule not in ADAPTIVE_RULES:
        raise ValueError(f"unknown rule {rule!r} (known: {', '.join(ADAPTIVE_RULES)})")
    t = m.dtype.type
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        for o, a, mm, vv in _slabs(old, aggregate, m, v):
            delta, sq = scratch.get(m.dtype, a.shape[0])
            np.subtract(a, o, out=delta, dtype=m.dtype)
            np.multiply(delta, delta, out=sq)
            # m: delta is free once it is folded in, and becomes a temporary.
            delta *= t(1 - beta1)
            mm *= t(beta1)
            mm += delta
            _second_moment(rule, vv, sq, delta, t(beta2))
            np.sqrt(vv, out=delta)
            delta += t(tau)
            np.divide(mm, delta, out=delta)
            delta *= t(lr)
            np.add(delta, o, out=delta, dtype=m.dtype)
            np.copyto(a, delta, casting="unsafe")


def _second_moment(rule: Rule, v: np.ndarray, sq: np.ndarray, tmp: np.ndarray, beta2: Any) -> None:
    """``v`` updated with ``sq = delta**2`` by ``rule``; ``tmp`` is scratch."""
    if rule == "adagrad":
        v += sq
    elif rule == "adam":
        v *= beta2
        sq *= 1 - beta2
        v += sq
    else:  # yogi: v moves towards delta**2 by (1 - beta2) * delta**2 at most
        np.subtract(v, sq, out=tmp)
        np.sign(tmp, out=tmp)
        tmp *= sq
        tmp *= 1 - beta2
        v -= tmp
