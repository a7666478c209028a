"""Updates as integers of a ring Z_2^bits, so that masks can be added to them.

    ring = Ring(bits=32, clip_range=0.5, max_addends=8)
    q = ring.quantize(update, rng)                  # uint32, each in [0, ring.levels]
    total = q_1 + q_2 + ... (mod 2**32)             # what the server unmasks
    mean_sum = ring.dequantize_sum(total, count=m)  # sum of the m clipped updates

Each coordinate is clipped to ``[-clip_range, clip_range]`` and mapped
onto ``[0, levels]``, where ``levels = (2**bits - 1) // max_addends``: the
sum of up to ``max_addends`` such integers never wraps around, so the
server's sum modulo ``2**bits`` is the true sum. Rounding is stochastic
(up with probability equal to the fraction), so the quantized value is an
unbiased estimate of the clipped one; a coordinate is off by less than one
step ``2 * clip_range / levels``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["RING_BITS", "Ring"]

#: The ring sizes supported, by bit width: the arrays are uint16 or uint32.
RING_BITS: dict[int, np.dtype] = {16: np.dtype("<u2"), 32: np.dtype("<u4")}


@dataclass(frozen=True)
class Ring:
    """Z_2^bits with a clipping range and the most values ever summed."""

    bits: int
    clip_range: float
    max_addends: int

    def __post_init__(self) -> None:
        if self.bits not in RING_BITS:
            raise ValueError(f"bits must be one of {sorted(RING_BITS)}, got {self.bits}")
        if not self.clip_range > 0:
            raise ValueError(f"clip_range must be > 0, got {self.clip_range}")
        if self.levels < 1:
            raise ValueError(f"{self.max_addends} addends leave no level in a {self.bits}-bit ring")

    @property
    def dtype(self) -> np.dtype:
        return RING_BITS[self.bits]

    @property
    def modulus(self) -> int:
        return 1 << self.bits

    @property
    def levels(self) -> int:
        """The largest quantized value (``max_addends`` of them fit the ring)."""
        return (self.modulus - 1) // max(1, self.max_addends)

    @property
    def step(self) -> float:
        """The value of one level: the most a coordinate's rounding is off by."""
        return 2.0 * self.clip_range / self.levels

    def quantize(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """``(q, clipped)``: ``x`` clipped and stochastically rounded onto
        ``[0, levels]`` (in the ring's dtype), and how many coordinates the
        clipping changed. Computed in float64: float32 cannot hold 2**31
        levels exactly."""
        r = self.clip_range
        v = np.asarray(x, dtype=np.float64)
        clipped = int(np.count_nonzero((v < -r) | (v > r)))
        v = np.clip(v, -r, r)
        v += r
        v *= self.levels / (2.0 * r)
        # floor(v + U), U uniform in [0, 1): rounds up with probability
        # equal to v's fraction, in one pass fewer than drawing and comparing.
        v += rng.random(v.shape)
        floor = np.floor(v, out=v)
        np.minimum(floor, self.levels, out=floor)
        return floor.astype(self.dtype), clipped

    def dequantize_sum(self, total: np.ndarray, *, count: int) -> np.ndarray:
        """The sum of ``count`` clipped values from the sum of their
        quantized forms (float64)."""
        return np.asarray(total, dtype=np.float64) * self.step - count * self.clip_range
