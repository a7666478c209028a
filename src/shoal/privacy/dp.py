"""The arithmetic of differential privacy on dicts of arrays.

An *update* is what a site's training changed: its weights minus the global
model it started from. DP bounds one site's (or one example's) influence by
clipping the update's L2 norm to ``C`` and hides what is left with Gaussian
noise of standard deviation ``z * C`` (``z``: the noise multiplier)::

    update = update_of(params, "full", reference=received)
    clipped, norm = clip_update(update, max_norm=1.0)
    add_gaussian(clipped, std=0.5, rng=noise_rng())

Only floating-point arrays are clipped and noised: integer arrays (step
counters) and bool masks carry no gradient, and noising them would make
them meaningless; a job that trains them must exclude them (docs/privacy.md).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping

import numpy as np

from shoal.arrays import is_floating
from shoal.errors import ConfigError

__all__ = ["add_gaussian", "clip_toward", "clip_update", "l2_norm", "noise_rng", "update_of"]


def noise_rng(seed: int | None = None) -> np.random.Generator:
    """The generator noise is drawn from: seeded with 128 bits from the
    operating system's CSPRNG unless ``seed`` is given (tests, reproducible
    studies). A seeded run's noise is known to whoever knows the seed."""
    return np.random.default_rng(secrets.randbits(128) if seed is None else seed)


def update_of(
    params: Mapping[str, np.ndarray],
    params_type: str,
    *,
    reference: Mapping[str, np.ndarray] | None,
    who: str,
    lenient: bool = False,
) -> dict[str, np.ndarray]:
    """The update ``params`` carry: themselves when ``params_type`` is
    ``"diff"``, else ``params - reference`` (bool arrays travel whole, as a
    diff result's do). ``who`` names the caller in errors. ``lenient``
    (the server's ``result_in``): an array that does not match the
    reference passes as it came, for the result's checks to refuse that one
    result, rather than fail the job here."""
    if params_type == "diff":
        return {name: np.asarray(a) for name, a in params.items()}
    if reference is None:
        raise ConfigError(
            f"{who} works on the update (the result minus the model the site received): "
            "it runs at result_out or result_in, or on params_type 'diff' results"
        )
    out: dict[str, np.ndarray] = {}
    for name, arr in params.items():
        a = np.asarray(arr)
        if a.dtype == np.bool_:
            out[name] = a
            continue
        ref = reference.get(name)
        if ref is None or np.shape(ref) != a.shape:
            if lenient:
                out[name] = a
                continue
            raise ConfigError(f"{who}: {name!r} does not match the model the site received")
        try:
            out[name] = np.subtract(a, np.asarray(ref), dtype=a.dtype)
        except (TypeError, ValueError) as exc:  # e.g. an int array where floats were sent
            if not lenient:
                raise ConfigError(f"{who}: {name!r}: {exc}") from None
            out[name] = a
    return out


def l2_norm(update: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of every floating-point array of ``update`` together
    (summed in float64, so a float16 update does not overflow)."""
    total = 0.0
    for a in update.values():
        if is_floating(a.dtype) and a.size:
            flat = a.reshape(-1).astype(np.float64, copy=False)
            total += float(np.dot(flat, flat))
    return math.sqrt(total)


def clip_update(
    update: Mapping[str, np.ndarray], *, max_norm: float
) -> tuple[dict[str, np.ndarray], float]:
    """``update`` scaled by ``min(1, max_norm / ||update||)`` (new arrays
    where it is scaled), and its norm before clipping."""
    norm = l2_norm(update)
    out = dict(update)
    if norm > max_norm:
        factor = max_norm / norm
        for name, a in update.items():
            if is_floating(a.dtype):
                out[name] = (a.astype(np.float64) * factor).astype(a.dtype)
    return out, norm


def clip_toward(
    arrays: Mapping[str, np.ndarray], old: Mapping[str, np.ndarray], *, max_norm: float
) -> tuple[dict[str, np.ndarray], float]:
    """``arrays`` moved toward ``old`` so that their difference (the update)
    has an L2 norm of at most ``max_norm``, and the update's norm before.

    One array at a time, in float64: a round's server holds one result and
    one array's scratch, not a float64 copy of the whole model."""
    floating = [n for n, a in arrays.items() if is_floating(a.dtype)]
    total = 0.0
    for name in floating:
        d = np.subtract(arrays[name], old[name], dtype=np.float64).reshape(-1)
        total += float(np.dot(d, d))
    norm = math.sqrt(total)
    out = dict(arrays)
    if norm > max_norm:
        factor = max_norm / norm
        for name in floating:
            d = np.subtract(arrays[name], old[name], dtype=np.float64)
            d *= factor
            d += old[name]
            out[name] = d.astype(arrays[name].dtype)
    return out, norm


def add_gaussian(
    arrays: Mapping[str, np.ndarray],
    *,
    std: float,
    rng: np.random.Generator,
    in_place: bool = False,
) -> dict[str, np.ndarray]:
    """``arrays`` with N(0, std²) added to every element of every
    floating-point array (drawn in float64, in name order). ``in_place``
    adds into writable arrays (the round's aggregate) instead of copying."""
    out = dict(arrays)
    if std == 0:
        return out
    for name in sorted(arrays):
        a = arrays[name]
        if not is_floating(a.dtype):
            continue
        noise = rng.normal(0.0, std, size=a.shape)
        if in_place and a.flags.writeable and a.dtype.kind == "f":
            np.add(a, noise, out=a, casting="same_kind")
        else:
            out[name] = (a.astype(np.float64) + noise).astype(a.dtype)
    return out
