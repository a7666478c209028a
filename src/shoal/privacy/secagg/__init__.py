"""Secure aggregation (SecAgg+: Bell et al., CCS 2020, on Bonawitz et al.,
CCS 2017): the server learns the sum of the sites' updates, not one of them.

Pure logic, no I/O: a site's side (:class:`SiteRound`), the server's
(:class:`ServerRound`, :class:`MaskedSum`, :func:`mean_update`), and their
parts: Shamir sharing (``shamir``), the ring and its quantization
(``ring``), masks expanded with ChaCha20 (``masks``), the neighbour graph
(``graph``), keys, encryption and commitments (``crypto``), and keys
authenticated by the project's PKI (``auth``). The workflow that drives a
round is ``shoal.workflows.secagg``; a site's part runs inside the Client
API (``shoal.client.secagg``). docs/privacy.md has the protocol and its
guarantees.
"""

from __future__ import annotations

from shoal.privacy.secagg.auth import AuthError, Credential, issue_credential
from shoal.privacy.secagg.masks import remove_masks
from shoal.privacy.secagg.messages import MESSAGE, WEIGHT, ProtocolError, RoundConfig
from shoal.privacy.secagg.ring import Ring
from shoal.privacy.secagg.server import MaskedSum, ServerRound, mean_update
from shoal.privacy.secagg.site import SiteRound

#: The workflows whose sites take part in secure aggregation: a site daemon
#: gives their workers a signing credential (``shoal.privacy.secagg.auth``).
SECAGG_WORKFLOWS = frozenset({"secagg"})

__all__ = [
    "MESSAGE",
    "SECAGG_WORKFLOWS",
    "WEIGHT",
    "AuthError",
    "Credential",
    "MaskedSum",
    "ProtocolError",
    "Ring",
    "RoundConfig",
    "ServerRound",
    "SiteRound",
    "issue_credential",
    "mean_update",
    "remove_masks",
]
