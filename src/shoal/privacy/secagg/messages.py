"""The messages of a SecAgg round: JSON documents carried as byte arrays.

Each stage's message rides beside the weights as the extra array
:data:`MESSAGE` (uint8, UTF-8 JSON), in a task down and in a result up: the
existing streaming transfer carries it, checksummed, with no new wire
format and nothing unpickled. Binary values (keys, ciphertexts, shares)
are base64 strings. Every document from a peer or the server is read with
the checks here, each failure a :class:`ProtocolError` naming the field.

The round's parameters, fixed by the server in the first task of the
round and checked by every site (:meth:`RoundConfig.check`), are
:class:`RoundConfig`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from shoal.privacy.secagg.graph import neighbours
from shoal.privacy.secagg.ring import RING_BITS, Ring
from shoal.taskmeta import SECAGG_MESSAGE

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MESSAGE",
    "WEIGHT",
    "ProtocolError",
    "RoundConfig",
    "b64",
    "decode",
    "digests",
    "encode",
    "get_bytes",
    "get_map",
    "get_names",
    "unb64",
]

#: The extra array each stage's message travels as.
MESSAGE = SECAGG_MESSAGE
#: The extra array a masked update's weight travels as.
WEIGHT = "secagg/weight"
#: The largest message read (a key list of 10,000 sites with certificates fits).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class ProtocolError(ValueError):
    """A SecAgg message or step that breaks the protocol; names the problem."""


def encode(doc: Mapping[str, Any]) -> np.ndarray:
    """``doc`` as the uint8 array that carries it."""
    return np.frombuffer(json.dumps(doc, separators=(",", ":")).encode(), dtype=np.uint8).copy()


def decode(array: Any, what: str) -> dict[str, Any]:
    """The JSON object in ``array``; ProtocolError naming ``what`` otherwise."""
    arr = np.asarray(array)
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise ProtocolError(f"{what}: the message must be a 1-D uint8 array")
    if arr.size > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"{what}: the message is {arr.size} bytes, over {MAX_MESSAGE_BYTES}")
    try:
        doc = json.loads(arr.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"{what}: the message is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"{what}: the message must be a JSON object")
    return doc


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(value: Any, what: str, size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise ProtocolError(f"{what} must be a base64 string")
    try:
        data = base64.b64decode(value, validate=True)
    except ValueError:
        raise ProtocolError(f"{what} is not base64") from None
    if size is not None and len(data) != size:
        raise ProtocolError(f"{what} must be {size} bytes, got {len(data)}")
    return data


def get_bytes(doc: Mapping[str, Any], key: str, what: str, size: int | None = None) -> bytes:
    return unb64(doc.get(key), f"{what}: {key}", size)


def get_map(doc: Mapping[str, Any], key: str, what: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ProtocolError(f"{what}: {key} must be an object keyed by site name")
    return value


def digests(value: Any, what: str) -> tuple[str, str]:
    """A holder's two commitments (of its ``b`` and its ``s`` share)."""
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(h, str) and len(h) == 64 for h in value)
    ):
        raise ProtocolError(f"{what} must be two SHA-256 hex digests")
    return value[0], value[1]


def get_names(doc: Mapping[str, Any], key: str, what: str) -> list[str]:
    value = doc.get(key)
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise ProtocolError(f"{what}: {key} must be a list of site names")
    if len(set(value)) != len(value):
        raise ProtocolError(f"{what}: {key} names a site twice")
    return sorted(value)


@dataclass(frozen=True)
class RoundConfig:
    """One round's parameters, as the server announces them."""

    round: int
    #: The round's sites (U0), sorted; a site's share point is its position + 1.
    sites: tuple[str, ...]
    #: Seed of the neighbour graph (``shoal.privacy.secagg.graph``).
    graph_seed: int
    #: Neighbours per site; 0: every other site (SecAgg).
    degree: int
    #: Shares needed to reconstruct a secret (t), of the ``degree + 1``
    #: each site deals (its neighbours and itself).
    threshold: int
    bits: int
    clip_range: float
    #: An update is scaled by ``weight / max_weight`` (1: unweighted).
    max_weight: int

    @property
    def ring(self) -> Ring:
        return Ring(bits=self.bits, clip_range=self.clip_range, max_addends=len(self.sites))

    def point(self, site: str) -> int:
        """``site``'s Shamir point."""
        return self.sites.index(site) + 1

    def graph(self) -> dict[str, frozenset[str]]:
        return neighbours(self.sites, degree=self.degree, seed=self.graph_seed)

    def check(self) -> None:
        """ProtocolError unless the parameters keep the guarantee: every
        site checks them, so a server cannot weaken them for one round."""
        n = len(self.sites)
        if n < 2:
            raise ProtocolError(f"round {self.round}: secure aggregation needs >= 2 sites, got {n}")
        if self.bits not in RING_BITS:
            raise ProtocolError(f"bits must be one of {sorted(RING_BITS)}, got {self.bits}")
        if not 0 < self.clip_range < float("inf"):
            raise ProtocolError(f"clip_range must be a positive number, got {self.clip_range}")
        if self.max_weight < 1 or n * self.max_weight >= 1 << self.bits:
            raise ProtocolError(
                f"max_weight {self.max_weight} times {n} sites must fit a {self.bits}-bit ring"
            )
        if self.degree < 0 or self.graph_seed < 0:
            raise ProtocolError("degree and graph_seed must be >= 0")
        # A site's shares go to its neighbours and itself.
        holders = 1 + min(len(v) for v in self.graph().values())
        # t > half the holders: a server cannot gather t shares of both
        # secrets of one site (its mask seed and its key) by telling half
        # the holders the site dropped and the others it did not: an honest
        # holder reveals one of the two, the site itself never its key.
        if not (1 <= self.threshold <= holders and 2 * self.threshold > holders):
            raise ProtocolError(
                f"threshold {self.threshold} must be more than half of, and at most, "
                f"the {holders} holders of a site's shares (its neighbours and itself)"
            )

    def to_doc(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["sites"] = list(self.sites)
        return doc

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> RoundConfig:
        what = "the round's parameters"
        ints = {}
        for key in ("round", "graph_seed", "degree", "threshold", "bits", "max_weight"):
            value = doc.get(key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ProtocolError(f"{what}: {key} must be an integer")
            ints[key] = value
        clip = doc.get("clip_range")
        if isinstance(clip, bool) or not isinstance(clip, (int, float)):
            raise ProtocolError(f"{what}: clip_range must be a number")
        sites: Sequence[str] = get_names(doc, "sites", what)
        config = cls(sites=tuple(sites), clip_range=float(clip), **ints)
        config.check()
        return config
