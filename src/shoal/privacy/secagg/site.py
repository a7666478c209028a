"""One site's side of a SecAgg+ round (Bonawitz et al. 2017, Fig. 4, with
Bell et al. 2020's neighbour graph): pure logic, no I/O.

    site = SiteRound(config, me="site-1", job_id=job, credential=cred, ca_pem=ca)
    advert = site.advertise()               # stage 0: two public keys, signed
    shares = site.share(keys_doc)           # stage 1: shares of b_u and s_u, encrypted
    site.begin_masking(mask_doc)            # stage 2: who shared, my ciphertexts
    masked = site.mask(update, weight=w)    #          the masked, quantized update
    reveal = site.reveal(unmask_doc)        # stage 3: shares for the survivors / the dropped

A method that finds the server's message breaks the protocol (a key that
does not verify, a survivor list too short, a second reveal) raises
:class:`ProtocolError` and the site gives nothing more for the round. With
a ``credential`` (a site under a daemon) the site signs its keys and
accepts a peer's only when signed (``shoal.privacy.secagg.auth``); without
one (``shoal simulate``) keys go unsigned, and a signature from a peer
cannot be checked (honest-but-curious server only).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from shoal.privacy.secagg.auth import AuthError, Credential, sign_keys, verify_keys
from shoal.privacy.secagg.crypto import (
    KEY_BYTES,
    Context,
    DecryptError,
    KeyPair,
    commitment,
    decrypt,
    encrypt,
    mask_seed,
    share_key,
)
from shoal.privacy.secagg.masks import Masked, mask_update
from shoal.privacy.secagg.messages import (
    ProtocolError,
    RoundConfig,
    b64,
    digests,
    get_bytes,
    get_map,
    get_names,
    unb64,
)
from shoal.privacy.secagg.shamir import SHARE_BYTES, share_to_bytes, split

__all__ = ["PeerKeys", "SiteRound"]

log = logging.getLogger(__name__)

#: A ciphertext of one holder's two shares: nonce, both shares, tag.
_CIPHERTEXT_BYTES = 12 + 2 * SHARE_BYTES + 16


@dataclass(frozen=True)
class PeerKeys:
    """A site's two advertised public keys."""

    c_pk: bytes
    s_pk: bytes

    @classmethod
    def from_doc(cls, doc: Any, what: str) -> PeerKeys:
        if not isinstance(doc, dict):
            raise ProtocolError(f"{what} must be an object")
        return cls(
            c_pk=get_bytes(doc, "c_pk", what, KEY_BYTES),
            s_pk=get_bytes(doc, "s_pk", what, KEY_BYTES),
        )


class SiteRound:
    """The state of one site in one round; its secrets never leave it except
    as the shares the protocol deals."""

    def __init__(
        self,
        config: RoundConfig,
        *,
        me: str,
        job_id: str,
        credential: Credential | None = None,
        ca_pem: bytes | None = None,
    ) -> None:
        config.check()
        if me not in config.sites:
            raise ProtocolError(f"round {config.round}: {me} is not among the round's sites")
        if credential is not None and (ca_pem is None or credential.site != me):
            raise ProtocolError("a signing credential needs the project CA and this site's name")
        self.config, self.me = config, me
        #: The fewest sites this site's update may be summed with.
        self.min_sites = credential.min_sites if credential is not None else 2
        if len(config.sites) < self.min_sites:
            raise ProtocolError(
                f"round {config.round}: {len(config.sites)} site(s), fewer than the job's "
                f"min_clients={self.min_sites}"
            )
        self.ctx = Context(job_id, config.round)
        self.credential, self.ca_pem = credential, ca_pem
        self.peers = config.graph()[me]
        self._c, self._s = KeyPair.generate(), KeyPair.generate()
        self._b = os.urandom(32)
        self.keys: dict[str, PeerKeys] = {}
        self._own: tuple[bytes, bytes] | None = None
        self._incoming: dict[str, tuple[bytes, str, str]] = {}
        #: The neighbours this site masks with (those that shared), once known.
        self.mask_peers: list[str] | None = None
        self._masked = False
        self._revealed = False

    def advertise(self) -> dict[str, Any]:
        """Stage 0: this round's two public keys (signed, with a credential)."""
        doc: dict[str, Any] = {"c_pk": b64(self._c.public), "s_pk": b64(self._s.public)}
        if self.credential is not None:
            doc["auth"] = sign_keys(self.credential, self.ctx, self._c.public, self._s.public)
        return doc

    def share(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """Stage 1: check the neighbours' keys; deal shares of ``b_u`` and
        ``s_u``'s private key to the neighbours that advertised and to
        itself, each neighbour's encrypted to it, each committed to."""
        what = "the key list"
        keys = get_map(doc, "keys", what)
        mine = PeerKeys.from_doc(keys.get(self.me), f"{what}: {self.me}")
        if (mine.c_pk, mine.s_pk) != (self._c.public, self._s.public):
            raise ProtocolError(f"{what}: this site's own keys were changed on the way")
        seen = {mine.c_pk, mine.s_pk}
        for peer in sorted(self.peers & set(keys)):
            entry = keys[peer]
            pk = PeerKeys.from_doc(entry, f"{what}: {peer}")
            if pk.c_pk in seen or pk.s_pk in seen or pk.c_pk == pk.s_pk:
                raise ProtocolError(f"{what}: {peer}'s keys repeat keys already listed")
            seen |= {pk.c_pk, pk.s_pk}
            if self.credential is not None:
                assert self.ca_pem is not None
                try:
                    verify_keys(
                        entry.get("auth"),
                        ctx=self.ctx,
                        site=peer,
                        c_pk=pk.c_pk,
                        s_pk=pk.s_pk,
                        ca_pem=self.ca_pem,
                    )
                except AuthError as exc:
                    raise ProtocolError(f"{what}: {exc}") from None
            self.keys[peer] = pk
        holders = sorted({*self.keys, self.me})
        t = self.config.threshold
        if len(holders) < t:
            raise ProtocolError(
                f"round {self.config.round}: {len(holders)} holder(s) for this site's shares "
                f"(it and the neighbours that advertised), threshold {t}"
            )
        points = {h: self.config.point(h) for h in holders}
        b_shares = split(self._b, threshold=t, xs=points.values())
        s_shares = split(self._s.private, threshold=t, xs=points.values())
        ciphertexts: dict[str, str] = {}
        commitments: dict[str, list[str]] = {}
        for holder, x in points.items():
            sb, ss = share_to_bytes(b_shares[x]), share_to_bytes(s_shares[x])
            commitments[holder] = [
                commitment(self.ctx, self.me, holder, "b", sb),
                commitment(self.ctx, self.me, holder, "s", ss),
            ]
            if holder == self.me:
                self._own = (sb, ss)
                continue
            key = share_key(self.ctx, self._c.private, self.keys[holder].c_pk, self.me, holder)
            ciphertexts[holder] = b64(encrypt(self.ctx, key, self.me, holder, sb + ss))
        return {"ciphertexts": ciphertexts, "commitments": commitments}

    def begin_masking(self, doc: Mapping[str, Any]) -> None:
        """Stage 2, first half: the sites that shared (U2), and the
        ciphertexts and commitments dealt to this site."""
        what = "the masking task"
        if self._own is None:
            raise ProtocolError(f"{what}: this site dealt no shares this round")
        shared = set(get_names(doc, "shared", what))
        if self.me not in shared:
            raise ProtocolError(f"{what}: this site is not listed among those that shared")
        unknown = sorted((shared & self.peers) - set(self.keys))
        if unknown:
            raise ProtocolError(f"{what}: {unknown[0]} shared, but its keys were never listed")
        self.mask_peers = sorted(shared & self.peers)
        if len(self.mask_peers) + 1 < self.config.threshold:
            raise ProtocolError(
                f"{what}: {len(self.mask_peers)} neighbour(s) shared; with this site fewer "
                f"than the threshold {self.config.threshold}"
            )
        ciphertexts = get_map(doc, "ciphertexts", what)
        commitments = get_map(doc, "commitments", what)
        for dealer in self.mask_peers:
            ct = get_map(ciphertexts, dealer, what).get(self.me)
            cm = get_map(commitments, dealer, what).get(self.me)
            if ct is None or cm is None:
                log.warning("round %d: %s dealt no share to %s", self.ctx.round, dealer, self.me)
                continue
            cb, cs = digests(cm, f"{what}: {dealer}'s commitments")
            data = unb64(ct, f"{what}: {dealer}'s ciphertext", _CIPHERTEXT_BYTES)
            self._incoming[dealer] = (data, cb, cs)

    def mask(self, update: Mapping[str, np.ndarray], *, weight: int) -> Masked:
        """Stage 2, second half: ``update`` (the floating arrays' change)
        scaled by ``weight / max_weight``, quantized, masked."""
        if self.mask_peers is None:
            raise ProtocolError("mask() before the masking task")
        if self._masked:
            raise ProtocolError("this round's update was masked already")
        if not 0 <= weight <= self.config.max_weight:
            raise ProtocolError(f"weight {weight} must be in [0, {self.config.max_weight}]")
        seeds = [(self._b, 1)]
        for peer in self.mask_peers:
            seed = mask_seed(self.ctx, self._s.private, self.keys[peer].s_pk, self.me, peer)
            seeds.append((seed, 1 if self.me < peer else -1))
        ring = self.config.ring
        rng = np.random.default_rng(int.from_bytes(os.urandom(16), "big"))
        self._masked = True
        return mask_update(
            update,
            weight=weight,
            scale=weight / self.config.max_weight,
            quantize=lambda x: ring.quantize(x, rng),
            dtype=ring.dtype,
            seeds=seeds,
        )

    def reveal(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """Stage 3: for each neighbour that dealt to this site, the share of
        its mask seed if it survived, of its key if it dropped; never both,
        and only once a round. A dealt share that does not open or does not
        match its dealer's commitment is reported as ``bad``, not revealed."""
        what = "the unmasking task"
        if not self._masked:
            raise ProtocolError(f"{what}: this site sent no masked update this round")
        if self._revealed:
            raise ProtocolError(f"{what}: this site revealed its shares for the round already")
        survivors = set(get_names(doc, "survivors", what))
        dropped = set(get_names(doc, "dropped", what))
        if self.me not in survivors:
            raise ProtocolError(f"{what}: this site is not listed among the survivors")
        if survivors & dropped:
            raise ProtocolError(f"{what}: a site is listed both as survivor and as dropped")
        need = max(self.config.threshold, self.min_sites)
        if len(survivors) < need:
            # Fewer and the sum would say too much of each update in it.
            raise ProtocolError(
                f"{what}: {len(survivors)} survivor(s), fewer than the threshold "
                f"{self.config.threshold} or the job's min_clients={self.min_sites}"
            )
        self._revealed = True
        assert self._own is not None
        b_out = {self.me: b64(self._own[0])}
        s_out: dict[str, str] = {}
        bad: dict[str, str] = {}
        for dealer, (ct, cb, cs) in sorted(self._incoming.items()):
            if dealer not in survivors and dealer not in dropped:
                continue
            try:
                pk = self.keys[dealer]
                key = share_key(self.ctx, self._c.private, pk.c_pk, self.me, dealer)
                plain = decrypt(self.ctx, key, dealer, self.me, ct)
            except DecryptError as exc:
                bad[dealer] = str(exc)
                continue
            sb, ss = plain[:SHARE_BYTES], plain[SHARE_BYTES:]
            if (
                commitment(self.ctx, dealer, self.me, "b", sb) != cb
                or commitment(self.ctx, dealer, self.me, "s", ss) != cs
            ):
                bad[dealer] = "the shares it dealt do not match its commitments"
                continue
            if dealer in survivors:
                b_out[dealer] = b64(sb)
            else:
                s_out[dealer] = b64(ss)
        return {"b": b_out, "s": s_out, "bad": bad}
