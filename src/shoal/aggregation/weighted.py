"""Incremental weighted mean: memory of one model, whatever the number of sites.

    mean = WeightedMean()
    for result in results:                 # results may be memory-mapped files
        mean.add(result.arrays(), weight=result.num_examples)
    global_params = mean.result()

Floating arrays are averaged in their own dtype (a float32 model stays float32,
so the accumulator is one extra model, not two), except the half-precision
ones (float16, bfloat16), which are averaged in float32 and rounded back once
at the end: blended in their own 11 or 8 bits, every site's contribution is
rounded again (of a mean of 8 sites, 29% of the bfloat16 and 33% of the
float16 elements came out correctly rounded, against 99.99% this way). The
float32 accumulator is twice the half-precision model. Either way the mean
is the running update ``m = m * (1 - f) + x * f``, ``f = w / W``: a convex
combination, so finite
contributions give a finite mean. A running sum of ``w * x`` overflows (a
float16 model at 60000 examples, a float32 one at 1e30 times 1e9), and so does
the difference in ``m += (x - m) * f`` (``3e38 - -3e38`` in float32). Should
an operation still overflow, or meet Inf (a caller that did not check its
contributions), :meth:`WeightedMean.result` refuses the mean rather than hand
out Inf or NaN. Integer and bool arrays (step counters, masks) are not
averaged: they take the value of the highest-weight contribution (the
earliest one on a tie).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from shoal.arrays import array_specs, check_compatible, is_floating
from shoal.errors import ArrayFormatError, ShoalError

__all__ = ["WeightedMean"]

# Work in slabs of this many elements so temporaries stay small for big layers.
_SLAB = 1 << 20


def _working_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype to do arithmetic on ``dtype``'s values in: float32 for the
    half-precision floats (float16, bfloat16), ``dtype`` itself otherwise."""
    if is_floating(dtype) and dtype.itemsize < 4:
        return np.dtype(np.float32)
    return dtype


class WeightedMean:
    """Running weighted mean of dicts of arrays, one contribution at a time.

    ``reuse``: arrays nothing else refers to any more (e.g. the previous
    round's mean), whose memory the first contribution is copied into where
    names, shapes and dtypes match, instead of memory of its own. Fresh memory
    is a page fault and a cleared page per page; on a VM that hands freed
    memory back to its host it cost the bench's workflow 0.2-0.4 s per
    100 MiB, filling reused memory 0.03 s.
    """

    def __init__(self, reuse: Mapping[str, np.ndarray] | None = None) -> None:
        self._reuse = reuse
        self._acc: dict[str, np.ndarray] | None = None
        self._specs: dict[str, tuple[str, tuple[int, ...]]] = {}
        #: The contributions' dtypes, which the mean is given back in.
        self._dtypes: dict[str, np.dtype] = {}
        self._total = 0.0
        self._best_weight = 0.0
        self._count = 0
        self._done = False
        #: An overflow or invalid operation happened while blending.
        self._overflowed = False

    @property
    def count(self) -> int:
        """Contributions added so far."""
        return self._count

    @property
    def total_weight(self) -> float:
        """Sum of the weights added so far."""
        return self._total

    def add(self, arrays: Mapping[str, np.ndarray], weight: float) -> None:
        """Fold ``arrays`` in with ``weight`` (> 0).

        Every contribution must have the names, shapes and dtypes of the first
        (ArrayFormatError otherwise, and nothing is changed).
        """
        if self._done:
            raise ShoalError("WeightedMean.add() after result()")
        try:
            weight = float(weight)
        except OverflowError:  # an int beyond float's range
            raise ValueError(f"weight must be a finite number > 0, got {weight!r}") from None
        if not weight > 0 or not np.isfinite(weight):
            raise ValueError(f"weight must be a finite number > 0, got {weight!r}")
        if self._acc is None:
            self._specs = array_specs(arrays)
            self._dtypes = {name: np.asarray(a).dtype for name, a in arrays.items()}
            reuse, self._reuse = self._reuse or {}, None
            self._acc = {
                name: _copy(a, reuse.get(name), _working_dtype(a.dtype))
                for name, a in arrays.items()
            }
            self._total = weight
            self._best_weight = weight
            self._count = 1
            return
        check_compatible(self._specs, arrays)
        self._total += weight
        fraction = weight / self._total
        take_ints = weight > self._best_weight
        scratch: dict[np.dtype, np.ndarray] = {}
        # numpy notes an overflow after each operation at no extra cost; a
        # pass over the mean to look for one would cost ~10 ms per 100 MiB.
        with np.errstate(over="call", invalid="call", call=self._note_fp_error):
            for name, acc in self._acc.items():
                src = arrays[name]
                if is_floating(acc.dtype):
                    n = min(acc.size, _SLAB)
                    buf = scratch.get(acc.dtype)
                    if buf is None or buf.shape[0] < n:
                        buf = scratch[acc.dtype] = np.empty(n, dtype=acc.dtype)
                    _blend(acc, src, fraction, buf)
                elif take_ints:
                    np.copyto(acc, src)
        if take_ints:
            self._best_weight = weight
        self._count += 1

    def _note_fp_error(self, kind: str, flag: int) -> None:
        self._overflowed = True

    def result(self) -> dict[str, np.ndarray]:
        """The weighted mean. Hands over the accumulator itself (no copy),
        but for half-precision arrays, rounded back from float32 to their
        dtype; no further :meth:`add` is accepted.

        Finite contributions give a finite mean (ArrayFormatError, naming the
        array, should one ever not be).
        """
        if self._acc is None:
            raise ArrayFormatError("nothing to aggregate: no contribution was added")
        self._done = True
        out = self._acc
        for name, dtype in self._dtypes.items():
            if out[name].dtype != dtype:
                out[name] = out[name].astype(dtype)
        for name, acc in out.items():
            # A float32 mean may round to Inf in float16, so half-precision
            # results are always checked (the model is half the size).
            if (
                (self._overflowed or acc.dtype.itemsize < 4)
                and is_floating(acc.dtype)
                and not np.isfinite(acc).all()
            ):
                raise ArrayFormatError(
                    f"{name}: the weighted mean is not finite (were the contributions?)"
                )
        return out


def _copy(src: np.ndarray, into: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    """A C-ordered copy of ``src`` as ``dtype``, in ``into`` when that fits."""
    src = np.asarray(src)
    if (
        into is not None
        and into.shape == src.shape
        and into.dtype == dtype
        and into.flags.c_contiguous
        and into.flags.writeable
        and not np.shares_memory(into, src)
    ):
        np.copyto(into, src)
        return into
    return np.array(src, dtype=dtype, copy=True, order="C")


def _blend(acc: np.ndarray, src: np.ndarray, fraction: float, scratch: np.ndarray) -> None:
    """``acc = acc * (1 - fraction) + src * fraction`` in ``acc``'s dtype (``src``
    may be a narrower float, converted on the way), slab
    by slab, ``src * fraction`` in ``scratch`` (one buffer for every slab: a
    fresh temporary per slab was a fresh mapping per slab, and its page
    faults cost more than the arithmetic, 55 of 80 ms per 100 MiB)."""
    flat_acc = acc.reshape(-1)
    flat_src = np.asarray(src).reshape(-1)
    f = acc.dtype.type(fraction)
    keep = acc.dtype.type(1.0 - fraction)
    for i in range(0, flat_acc.shape[0], _SLAB):
        a = flat_acc[i : i + _SLAB]
        d = np.multiply(flat_src[i : i + _SLAB], f, out=scratch[: a.shape[0]], dtype=acc.dtype)
        a *= keep
        a += d
