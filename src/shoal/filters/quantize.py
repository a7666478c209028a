"""Quantized updates for slow links: fewer bytes on the wire, the same model.

The site's ``quantize`` (``result_out``) sends its update (the result minus
the model it received) with every floating-point array narrowed:

* ``bits: 16``: cast to float16 (half a float32's bytes, a quarter of a
  float64's); an update that overflows float16 is refused, not sent as inf.
* ``bits: 8``: affine uint8 per array, ``x ≈ lo + q * scale`` with
  ``scale = (max - min) / 255``; ``lo`` and ``scale`` travel beside it as an
  extra array (``quantize/<name>``, 16 bytes). Error at most ``scale / 2``.

The server's ``dequantize`` (``result_in``) casts each array back to the
global model's dtype *before* the result is validated against it, so the
driver's checks (names, shapes, dtypes, finite values) see the model's form.
A result that was not quantized passes unchanged; one whose quantization is
malformed is left as it came, and the driver's checks refuse it::

    filters:
      result_out: [{filter: quantize, args: {bits: 8}}]
      result_in: [dequantize]

bench/quantize.py measures the bytes saved on a 100 MiB model.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from shoal.arrays import is_floating
from shoal.client.model import FLModel
from shoal.filters.builtin import update_in
from shoal.filters.context import FilterContext

__all__ = ["QUANTIZED_KEY", "Dequantize", "Quantize"]

log = logging.getLogger(__name__)

#: Result meta key: the bits a result's floating-point arrays were narrowed to.
QUANTIZED_KEY = "shoal_quantized_bits"
#: Extra-array name prefix of an 8-bit array's ``[lo, scale]``.
_RANGE = "quantize/"


class Quantize:
    """The update's floating-point arrays as float16 (``bits: 16``) or
    affine uint8 (``bits: 8``)."""

    POINTS = ("result_out",)

    def __init__(self, *, bits: int) -> None:
        if isinstance(bits, bool) or bits not in (8, 16):
            raise ValueError(f"bits must be 8 or 16, got {bits!r}")
        self.bits = bits

    def __call__(self, model: FLModel, ctx: FilterContext) -> FLModel:
        update = update_in(model, ctx, "quantize")
        extras = dict(model.extras)
        before = after = 0
        for name, a in update.items():
            if not is_floating(a.dtype) or a.dtype.itemsize * 8 <= self.bits:
                continue
            before += a.nbytes
            if self.bits == 16:
                with np.errstate(over="ignore"):
                    q = a.astype(np.float16)
                if not np.isfinite(q).all() and np.isfinite(a).all():
                    raise ValueError(
                        f"{name!r}: the update exceeds float16's range (65504); "
                        "clip it first or use bits: 8"
                    )
            else:
                q, extras[f"{_RANGE}{name}"] = _to_uint8(a)
            update[name] = q
            after += q.nbytes
        log.info(
            "quantize on %s (round %s): %d-bit, %d -> %d bytes of weights",
            ctx.site,
            ctx.round,
            self.bits,
            before,
            after,
        )
        meta = {**model.meta, QUANTIZED_KEY: self.bits}
        return dataclasses.replace(
            model, params=update, params_type="diff", extras=extras, meta=meta
        )


def _to_uint8(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo = float(a.min()) if a.size else 0.0
    hi = float(a.max()) if a.size else 0.0
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    q = np.rint((a.astype(np.float64) - lo) / scale)
    return np.clip(q, 0, 255).astype(np.uint8), np.array([lo, scale], dtype=np.float64)


class Dequantize:
    """A quantized result's arrays back in the global model's dtypes."""

    POINTS = ("result_in",)

    def __call__(self, model: FLModel, ctx: FilterContext) -> FLModel:
        if model.meta.get(QUANTIZED_KEY) not in (8, 16) or ctx.reference is None:
            return model
        params = dict(model.params)
        extras = {k: v for k, v in model.extras.items() if not k.startswith(_RANGE)}
        for name, a in model.params.items():
            ref = ctx.reference.get(name)
            if ref is None or not is_floating(ref.dtype) or a.dtype == ref.dtype:
                continue
            if a.dtype == np.float16:
                params[name] = a.astype(ref.dtype)
            elif a.dtype == np.uint8:
                span = model.extras.get(f"{_RANGE}{name}")
                if span is None or span.shape != (2,) or not np.isfinite(span).all():
                    continue  # left as uint8: the result's check refuses it, named
                lo, scale = (float(x) for x in span)
                params[name] = (lo + a.astype(np.float64) * scale).astype(ref.dtype)
        meta = {k: v for k, v in model.meta.items() if k != QUANTIZED_KEY}
        return dataclasses.replace(model, params=params, extras=extras, meta=meta)
