"""Shamir secret sharing of 32-byte secrets over the prime field GF(2**521 - 1).

    shares = split(secret, threshold=3, xs=[1, 2, 3, 4, 5])   # {x: y}
    assert combine({x: shares[x] for x in (2, 4, 5)}, threshold=3) == secret

Any ``threshold`` shares give the secret back; fewer give no information
about it (each coefficient of the random polynomial is uniform in the field).
This is arithmetic, not a cipher: the randomness is ``secrets`` (the OS
CSPRNG), and the field is the Mersenne prime 2**521 - 1, larger than any
32-byte secret, so a secret is a field element as it is. No package on PyPI
is both maintained and small for this (``secretsharing`` was last released
in 2014, PyCryptodome's ``Shamir`` works over GF(2**128) for 16-byte
secrets only), so it is written here, with property tests
(tests/privacy/test_shamir.py).

A share travels as :data:`SHARE_BYTES` big-endian bytes (its ``y``; the
``x`` is the holder's position, known to everyone).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping

__all__ = [
    "PRIME",
    "SECRET_BYTES",
    "SHARE_BYTES",
    "ShamirError",
    "combine",
    "share_from_bytes",
    "share_to_bytes",
    "split",
]

#: The field's modulus: the Mersenne prime 2**521 - 1.
PRIME = 2**521 - 1
#: What is shared: 32-byte secrets (a mask seed, an X25519 private key).
SECRET_BYTES = 32
#: A share's ``y`` as bytes.
SHARE_BYTES = (PRIME.bit_length() + 7) // 8


class ShamirError(ValueError):
    """Shares that cannot give a secret: too few, a bad point, or not a secret."""


def _check_points(xs: Iterable[int]) -> list[int]:
    points = list(xs)
    if len(set(points)) != len(points):
        raise ShamirError("share points must be distinct")
    for x in points:
        if isinstance(x, bool) or not isinstance(x, int) or not 0 < x < PRIME:
            raise ShamirError(f"share point {x!r} must be an integer in [1, p)")
    return points


def split(secret: bytes, *, threshold: int, xs: Iterable[int]) -> dict[int, int]:
    """Shares of ``secret`` at the points ``xs`` (``{x: f(x)}``); any
    ``threshold`` of them give it back."""
    if len(secret) != SECRET_BYTES:
        raise ShamirError(f"a secret is {SECRET_BYTES} bytes, got {len(secret)}")
    points = _check_points(xs)
    if not 1 <= threshold <= len(points):
        raise ShamirError(f"threshold {threshold} must be in [1, {len(points)}] (the share count)")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    out: dict[int, int] = {}
    for x in points:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        out[x] = y
    return out


def combine(shares: Mapping[int, int], *, threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares ``{x: y}`` (the first
    ``threshold`` by point are used). Shares that were not made together give
    a wrong value or a ShamirError, never the secret: check them against
    their commitments first."""
    points = _check_points(sorted(shares))[:threshold]
    if threshold < 1 or len(points) < threshold:
        raise ShamirError(f"{len(shares)} share(s), {threshold} needed")
    secret = 0
    for i, xi in enumerate(points):
        yi = shares[xi]
        if isinstance(yi, bool) or not isinstance(yi, int) or not 0 <= yi < PRIME:
            raise ShamirError(f"share at {xi} is not a field element")
        # Lagrange basis at 0: prod x_j / (x_j - x_i).
        num, den = 1, 1
        for j, xj in enumerate(points):
            if j != i:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 2 ** (8 * SECRET_BYTES):
        raise ShamirError("the shares do not belong together (the value is not a secret)")
    return secret.to_bytes(SECRET_BYTES, "big")


def share_to_bytes(y: int) -> bytes:
    """A share's ``y`` on the wire."""
    return y.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(data: bytes) -> int:
    """A share's ``y`` from the wire; ShamirError when it is not a field element."""
    if len(data) != SHARE_BYTES:
        raise ShamirError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
    y = int.from_bytes(data, "big")
    if y >= PRIME:
        raise ShamirError("a share is not a field element")
    return y
