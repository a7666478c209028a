"""The server's side of a SecAgg+ round: relay, check, reconstruct, unmask.

    server = ServerRound(config, job_id=job)
    server.add_advertisement(site, doc)      # stage 0, each site (U1)
    keys_doc = server.keys_doc()
    server.add_shares(site, doc)             # stage 1, each site (U2)
    mask_doc = server.mask_doc()
    total = MaskedSum(specs, config.ring)    # stage 2: fold masked updates as they come (U3)
    total.add(site, arrays, weight)
    unmask_doc = server.unmask_doc(total.sites)
    server.add_reveal(site, doc)             # stage 3, each survivor
    remove_masks(total.arrays, total.weight, server.seeds())
    new = mean_update(old, total, config)    # the global model plus the mean update

The server sees keys, ciphertexts, commitments, masked updates and, at
the end, shares of each survivor's mask seed and each dropped site's key:
never both for one site, so it learns the sum and nothing of one update.

A revealed share is checked against the commitment its dealer made in
stage 1: one that does not match is a share its sender made up (an honest
holder reports a dealt share that does not match as ``bad`` instead of
revealing it). That sender is *inconsistent*: every share it revealed is
set aside, the secrets are rebuilt from the others', and the workflow
leaves it out of later rounds (:attr:`ServerRound.inconsistent`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from shoal.privacy.secagg.crypto import KEY_BYTES, Context, commitment, mask_seed, public_of
from shoal.privacy.secagg.masks import CHUNK
from shoal.privacy.secagg.messages import (
    ProtocolError,
    RoundConfig,
    digests,
    get_bytes,
    get_map,
    unb64,
)
from shoal.privacy.secagg.ring import Ring
from shoal.privacy.secagg.shamir import SHARE_BYTES, ShamirError, combine, share_from_bytes

__all__ = ["MaskedSum", "ServerRound", "mean_update"]

log = logging.getLogger(__name__)

_MAX_CIPHERTEXT_CHARS = 1024


class ServerRound:
    """What the server holds of one round: public keys, ciphertexts,
    commitments, and the shares revealed at the end."""

    def __init__(self, config: RoundConfig, *, job_id: str) -> None:
        config.check()
        self.config = config
        self.ctx = Context(job_id, config.round)
        self.graph = config.graph()
        #: Stage 0's answers (U1): each site's advertised document.
        self.adverts: dict[str, dict[str, Any]] = {}
        self._s_pk: dict[str, bytes] = {}
        #: Stage 1's answers (U2): dealer -> holder -> ciphertext (base64).
        self.ciphertexts: dict[str, dict[str, str]] = {}
        #: dealer -> holder -> (commitment of the b share, of the s share).
        self.commitments: dict[str, dict[str, tuple[str, str]]] = {}
        self.survivors: list[str] = []
        self.dropped: list[str] = []
        #: kind ("b"/"s") -> dealer -> holder -> share.
        self._shares: dict[str, dict[str, dict[str, int]]] = {"b": {}, "s": {}}
        #: Sites that revealed a share their dealer never committed to.
        self.inconsistent: dict[str, str] = {}
        #: holder -> dealer -> why the holder found the dealer's shares bad.
        self.reported: dict[str, dict[str, str]] = {}

    def setup_doc(self) -> dict[str, Any]:
        return self.config.to_doc()

    def add_advertisement(self, site: str, doc: Mapping[str, Any]) -> None:
        """Stage 0: ``site``'s keys (signatures are for the peers to check:
        the server holds no key that could)."""
        if site not in self.config.sites or site in self.adverts:
            raise ProtocolError(f"an unexpected advertisement from {site}")
        what = f"{site}'s keys"
        c_pk = get_bytes(doc, "c_pk", what, KEY_BYTES)
        s_pk = get_bytes(doc, "s_pk", what, KEY_BYTES)
        entry: dict[str, Any] = {"c_pk": doc["c_pk"], "s_pk": doc["s_pk"]}
        auth = doc.get("auth")
        if auth is not None:
            if not isinstance(auth, dict) or not all(
                isinstance(v, str) and len(v) <= 16384 for v in auth.values()
            ):
                raise ProtocolError(f"{what}: auth must be an object of strings")
            entry["auth"] = auth
        if c_pk == s_pk:
            raise ProtocolError(f"{what}: the two keys must differ")
        self.adverts[site] = entry
        self._s_pk[site] = s_pk

    def keys_doc(self) -> dict[str, Any]:
        return {"keys": dict(sorted(self.adverts.items()))}

    def add_shares(self, site: str, doc: Mapping[str, Any]) -> None:
        """Stage 1: ``site``'s ciphertexts and commitments, one per holder:
        its neighbours that advertised, and itself (a commitment only)."""
        if site not in self.adverts or site in self.ciphertexts:
            raise ProtocolError(f"unexpected shares from {site}")
        what = f"{site}'s shares"
        allowed = (self.graph[site] & set(self.adverts)) | {site}
        ciphertexts = get_map(doc, "ciphertexts", what)
        commitments = get_map(doc, "commitments", what)
        if not set(commitments) <= allowed or not set(ciphertexts) <= allowed - {site}:
            raise ProtocolError(f"{what}: dealt to a site that is not a neighbour that advertised")
        if set(ciphertexts) | {site} != set(commitments):
            raise ProtocolError(f"{what}: one commitment per holder, itself included")
        if len(commitments) < self.config.threshold:
            raise ProtocolError(f"{what}: fewer holders than the threshold")
        for holder, ct in ciphertexts.items():
            if not isinstance(ct, str) or len(ct) > _MAX_CIPHERTEXT_CHARS:
                raise ProtocolError(f"{what}: the ciphertext for {holder} is not a short string")
            unb64(ct, f"{what}: the ciphertext for {holder}")
        self.commitments[site] = {
            h: digests(c, f"{what}: the commitments for {h}") for h, c in commitments.items()
        }
        self.ciphertexts[site] = dict(ciphertexts)

    @property
    def shared(self) -> list[str]:
        """U2: the sites whose shares are held."""
        return sorted(self.ciphertexts)

    def mask_doc(self) -> dict[str, Any]:
        """Stage 2's message: who shared, and what each dealt to whom."""
        shared = set(self.shared)
        return {
            "shared": sorted(shared),
            "ciphertexts": {
                d: {h: ct for h, ct in cts.items() if h in shared}
                for d, cts in sorted(self.ciphertexts.items())
            },
            "commitments": {
                d: {h: list(c) for h, c in cms.items() if h in shared and h != d}
                for d, cms in sorted(self.commitments.items())
            },
        }

    def unmask_doc(self, survivors: Mapping[str, Any] | list[str]) -> dict[str, Any]:
        """Stage 3's message: the sites whose masked update is in the sum
        (U3) and those that shared but sent none (dropped)."""
        self.survivors = sorted(survivors)
        if not set(self.survivors) <= set(self.shared):
            raise ProtocolError("a masked update came from a site that shared nothing")
        self.dropped = sorted(set(self.shared) - set(self.survivors))
        return {"survivors": self.survivors, "dropped": self.dropped}

    def add_reveal(self, site: str, doc: Mapping[str, Any]) -> None:
        """Stage 3: ``site``'s shares, each checked against its dealer's commitment."""
        if site not in self.survivors or site in self.inconsistent:
            raise ProtocolError(f"unexpected shares revealed by {site}")
        what = f"the shares {site} revealed"
        got: dict[str, dict[str, int]] = {"b": {}, "s": {}}
        for kind, dealers in (("b", self.survivors), ("s", self.dropped)):
            for dealer, value in get_map(doc, kind, what).items():
                if dealer not in dealers or site not in self.commitments.get(dealer, {}):
                    raise ProtocolError(f"{what}: a {kind!r} share of {dealer}, not asked for")
                raw = unb64(value, f"{what}: {dealer}", SHARE_BYTES)
                expected = self.commitments[dealer][site][0 if kind == "b" else 1]
                if commitment(self.ctx, dealer, site, kind, raw) != expected:
                    self.inconsistent[site] = (
                        f"its share of {dealer}'s {'mask seed' if kind == 'b' else 'key'} "
                        f"does not match {dealer}'s commitment"
                    )
                    log.warning(
                        "round %d: %s is inconsistent: %s; its shares are set aside",
                        self.config.round,
                        site,
                        self.inconsistent[site],
                    )
                    return
                got[kind][dealer] = share_from_bytes(raw)
        bad = get_map(doc, "bad", what)
        if bad:
            self.reported[site] = {d: str(r)[:200] for d, r in bad.items()}
            for dealer, reason in self.reported[site].items():
                log.warning(
                    "round %d: %s reports %s's shares: %s", self.config.round, site, dealer, reason
                )
        for kind, by_dealer in got.items():
            for dealer, y in by_dealer.items():
                self._shares[kind].setdefault(dealer, {})[site] = y

    def _secret(self, kind: str, dealer: str) -> bytes:
        held = self._shares[kind].get(dealer, {})
        points = {self.config.point(h): y for h, y in held.items() if h not in self.inconsistent}
        t = self.config.threshold
        if len(points) < t:
            raise ProtocolError(
                f"round {self.config.round}: {len(points)} consistent share(s) of {dealer}'s "
                f"{'mask seed' if kind == 'b' else 'key'}, {t} needed"
            )
        try:
            return combine(points, threshold=t)
        except ShamirError as exc:
            raise ProtocolError(f"{dealer}'s shares: {exc}") from None

    def seeds(self) -> Iterator[tuple[bytes, int]]:
        """The masks in the sum, as ``(seed, sign)``: each survivor's self
        mask, and each pairwise mask between a survivor and a dropped site
        (added by the survivor, with the survivor's sign)."""
        for site in self.survivors:
            yield self._secret("b", site), 1
        survivors = set(self.survivors)
        for dropped in self.dropped:
            key = self._secret("s", dropped)
            if public_of(key) != self._s_pk[dropped]:
                raise ProtocolError(f"{dropped}'s reconstructed key is not the one it advertised")
            for peer in sorted(self.graph[dropped] & survivors):
                yield (
                    mask_seed(self.ctx, key, self._s_pk[peer], peer, dropped),
                    1 if peer < dropped else -1,
                )


class MaskedSum:
    """The running sum of masked updates, in the ring (memory: one model of
    the ring's dtype). Each update is added in chunks, so a memory-mapped
    one is read, not copied."""

    def __init__(self, specs: Mapping[str, tuple[int, ...]], ring: Ring) -> None:
        self.ring = ring
        self.arrays = {n: np.zeros(shape, ring.dtype) for n, shape in sorted(specs.items())}
        self.weight = np.zeros(1, ring.dtype)
        #: Sites whose update is in the sum.
        self.sites: list[str] = []

    def check(self, arrays: Mapping[str, np.ndarray], weight: np.ndarray) -> None:
        """ProtocolError unless ``arrays`` and ``weight`` are a masked update of this model."""
        if set(arrays) != set(self.arrays):
            missing = sorted(set(self.arrays) ^ set(arrays))
            raise ProtocolError(
                f"the masked update's arrays differ from the model's: {missing[:3]}"
            )
        for name, arr in arrays.items():
            if arr.dtype != self.ring.dtype or arr.shape != self.arrays[name].shape:
                raise ProtocolError(
                    f"masked array {name!r} is {arr.dtype}{list(arr.shape)}, expected "
                    f"{self.ring.dtype}{list(self.arrays[name].shape)}"
                )
        if weight.dtype != self.ring.dtype or weight.shape != (1,):
            raise ProtocolError(f"the masked weight must be one {self.ring.dtype} value")

    def add(self, site: str, arrays: Mapping[str, np.ndarray], weight: np.ndarray) -> None:
        self.check(arrays, weight)
        for name, total in self.arrays.items():
            flat, src = total.reshape(-1), np.asarray(arrays[name]).reshape(-1)
            for start in range(0, flat.size, CHUNK):
                part = flat[start : start + CHUNK]
                np.add(part, src[start : start + CHUNK], out=part)
        np.add(self.weight, weight, out=self.weight)
        self.sites.append(site)


def mean_update(
    old: Mapping[str, np.ndarray], total: MaskedSum, config: RoundConfig
) -> dict[str, np.ndarray]:
    """The new global model: ``old`` plus the weighted mean of the unmasked
    updates (``total`` with every mask removed), each floating array in its
    dtype; other arrays as in ``old``. Each array of ``total`` is freed as
    soon as it is used."""
    count = len(total.sites)
    weight = int(total.weight[0])
    if weight <= 0:
        raise ProtocolError("the survivors' weights sum to 0: no update to average")
    factor = config.max_weight / weight
    ring = total.ring
    out: dict[str, np.ndarray] = {}
    for name, arr in old.items():
        if name not in total.arrays:
            out[name] = np.array(arr, copy=True)
            continue
        acc = total.arrays.pop(name)
        flat_old = np.asarray(arr).reshape(-1)
        new = np.empty(flat_old.size, dtype=arr.dtype)
        flat_acc = acc.reshape(-1)
        for start in range(0, new.size, CHUNK):
            end = start + CHUNK
            mean = ring.dequantize_sum(flat_acc[start:end], count=count) * factor
            new[start:end] = flat_old[start:end] + mean
        out[name] = new.reshape(arr.shape)
        del acc, flat_acc
    return out
