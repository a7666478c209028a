"""SecAgg+'s communication graph: each site pairs with ``degree`` neighbours.

Bell et al. (CCS 2020) replace SecAgg's complete graph with a random
Harary graph: the sites in a random order on a ring, each joined to the
``degree / 2`` nearest on either side. Masks and shares then cost
``O(degree)`` per site instead of ``O(n)``, with the same guarantee for a
``degree`` of order ``log n`` (the paper's Theorem 3 gives the numbers).

The order is drawn from a seed the server picks each round and every site
recomputes: ``SHA-256(seed, name)`` sorts the names, the same on every
machine and version (a library's shuffle may change between releases, and
two sites that disagree on the graph would mask with different peers).

    >>> g = neighbours(["a", "b", "c", "d", "e"], degree=2, seed=7)
    >>> all(len(v) == 2 for v in g.values())
    True
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = ["neighbours"]


def neighbours(sites: Sequence[str], *, degree: int, seed: int) -> dict[str, frozenset[str]]:
    """Each site's neighbours. ``degree`` 0, or at least ``len(sites) - 1``:
    every other site (SecAgg's complete graph); otherwise an even number."""
    names = sorted(set(sites))
    n = len(names)
    if degree < 0:
        raise ValueError(f"degree must be >= 0, got {degree}")
    if degree == 0 or degree >= n - 1:
        return {s: frozenset(names) - {s} for s in names}
    if degree % 2:
        raise ValueError(f"degree must be even (a Harary graph), got {degree}")
    key = seed.to_bytes(16, "big", signed=False)
    order = sorted(names, key=lambda s: hashlib.sha256(key + s.encode("utf-8")).digest())
    half = degree // 2
    out: dict[str, set[str]] = {s: set() for s in names}
    for i, site in enumerate(order):
        for d in range(1, half + 1):
            other = order[(i + d) % n]
            out[site].add(other)
            out[other].add(site)
    return {s: frozenset(v) for s, v in out.items()}
