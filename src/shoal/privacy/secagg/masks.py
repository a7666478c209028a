"""Masks expanded from 32-byte seeds with ChaCha20, and the masked vector.

A site's masked update is, modulo ``2**bits``, ::

    y_u = q_u + PRG(b_u) + sum over neighbours v of sign(u, v) * PRG(s_uv)

with ``sign(u, v) = +1`` when ``u < v`` (by name) and ``-1`` otherwise, so
the pairwise masks cancel in the sum over sites; the server removes each
survivor's self mask ``PRG(b_u)`` (and a dropped site's pairwise masks)
once it has reconstructed the seeds. ``PRG`` is the ChaCha20 keystream of
the seed (RFC 8439, from ``cryptography``) read as little-endian integers
of the ring's width: uniform in the ring.

The vector is the update's floating arrays in order of name, each
flattened, then the weight (one value). Every stream is read in
:data:`CHUNK` values at a time, so masking a 1 GiB model never holds more
than a chunk of each mask: a site's memory is the update and its masked
copy; the server's, the running sum.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

__all__ = ["CHUNK", "MaskStream", "Masked", "mask_update", "remove_masks"]

#: Values masked at a time (4 MiB of uint32).
CHUNK = 1 << 20
#: ChaCha20's 16-byte nonce: a 4-byte block counter from 0, then a constant
#: (each seed is fresh for one round and one purpose, never reused).
_NONCE = b"\0\0\0\0" + b"shoal-mask\0\0"


class MaskStream:
    """``PRG(seed)`` as a stream of ring elements, read in order.

    >>> a = MaskStream(bytes(32), np.dtype("<u4"))
    >>> b = MaskStream(bytes(32), np.dtype("<u4"))
    >>> first = a.take(3).copy()
    >>> bool((np.concatenate([first, a.take(5)]) == b.take(8)).all())
    True
    """

    def __init__(self, seed: bytes, dtype: np.dtype) -> None:
        if len(seed) != 32:
            raise ValueError(f"a mask seed is 32 bytes, got {len(seed)}")
        self._enc = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
        self._dtype = np.dtype(dtype)
        self._buf = bytearray()

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` mask values: a view of this stream's buffer, valid
        until the next call (the keystream is written in place, no copy)."""
        size = n * self._dtype.itemsize
        if len(self._buf) < size:
            self._buf = bytearray(size)
        self._enc.update_into(_zeros(size), self._buf)
        return np.frombuffer(self._buf, dtype=self._dtype, count=n)


_ZEROS = memoryview(bytes(CHUNK * 8))


def _zeros(size: int) -> memoryview:
    """``size`` zero bytes (a view of one shared buffer when it is long enough)."""
    return _ZEROS[:size] if size <= len(_ZEROS) else memoryview(bytes(size))


@dataclass(frozen=True)
class Masked:
    """A site's masked update."""

    #: The masked floating arrays, by name, each in the ring's dtype.
    arrays: dict[str, np.ndarray]
    #: The masked weight: one value.
    weight: np.ndarray
    #: Coordinates the clipping changed.
    clipped: int


def _apply(target: np.ndarray, streams: Sequence[tuple[MaskStream, int]]) -> None:
    """Adds (sign +1) or subtracts (-1) each stream's next values, in place."""
    for stream, sign in streams:
        mask = stream.take(target.size)
        if sign > 0:
            np.add(target, mask, out=target)
        else:
            np.subtract(target, mask, out=target)


def mask_update(
    update: Mapping[str, np.ndarray],
    *,
    weight: int,
    scale: float,
    quantize: Callable[[np.ndarray], tuple[np.ndarray, int]],
    dtype: np.dtype,
    seeds: Iterable[tuple[bytes, int]],
) -> Masked:
    """``update`` (floating arrays) times ``scale``, quantized by
    ``quantize(chunk) -> (q, clipped)`` and masked by the streams of
    ``seeds`` (``(seed, +1 or -1)``), chunk by chunk; then the weight, masked
    by the same streams."""
    streams = [(MaskStream(seed, dtype), sign) for seed, sign in seeds]
    out: dict[str, np.ndarray] = {}
    clipped = 0
    for name in sorted(update):
        x = np.asarray(update[name]).reshape(-1)
        masked = np.empty(x.size, dtype=dtype)
        for start in range(0, x.size, CHUNK):
            chunk = x[start : start + CHUNK].astype(np.float64)
            if scale != 1.0:
                chunk *= scale
            q, n = quantize(chunk)
            clipped += n
            _apply(q, streams)
            masked[start : start + CHUNK] = q
        out[name] = masked.reshape(np.shape(update[name]))
    w = np.array([weight], dtype=dtype)
    _apply(w, streams)
    return Masked(arrays=out, weight=w, clipped=clipped)


def remove_masks(
    total: Mapping[str, np.ndarray], weight: np.ndarray, seeds: Iterable[tuple[bytes, int]]
) -> None:
    """Subtract (sign +1) or add back (-1) each seed's mask from the running
    sum ``total`` (arrays by name, in the ring's dtype) and ``weight``, in
    place: the order of :func:`mask_update`."""
    names = sorted(total)
    for seed, sign in seeds:
        stream = [(MaskStream(seed, weight.dtype), -sign)]
        for name in names:
            flat = total[name].reshape(-1)
            for start in range(0, flat.size, CHUNK):
                _apply(flat[start : start + CHUNK], stream)
        _apply(weight, stream)
