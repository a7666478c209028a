"""Who is calling: the peer's verified certificate, checked against the
revocation list, the authority that must have signed it, and the port.

    identities = Identities(crl_path=..., ca_pem=..., job_credentials=authority,
                            on_new_crl=registry.end_revoked)
    who = identities.identify(context, expected_type="admin")        # sync server
    who = await identities.identify_aio(context, expected_type="client")  # grpc.aio

A refused call is aborted with the status and details the caller sees; the
refusal is logged on the server. The services receive only ``identify`` (or
``identify_aio``), never this object.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import grpc

from shoal.provision import Identity, identity_from_cert, load_revoked_serials
from shoal.provision.jobcreds import JobCredentialAuthority
from shoal.transport import peer_cert_pem

__all__ = ["Identify", "IdentifyAio", "Identities", "Refused"]

# The daemon's logger: these lines ("refused ...", "loaded revocation list")
# read as they did when the checks lived in shoal.server.daemon, and the log
# format names the logger.
log = logging.getLogger("shoal.server.daemon")

#: An identities cache past this many certificates starts again.
_MAX_CACHED = 10_000


class Identify(Protocol):
    """The caller's identity on a synchronous gRPC server, or abort the call."""

    def __call__(
        self, context: grpc.ServicerContext, *, expected_type: str | tuple[str, ...]
    ) -> Identity: ...


class IdentifyAio(Protocol):
    """The caller's identity on a ``grpc.aio`` server, or abort the call."""

    async def __call__(
        self, context: grpc.aio.ServicerContext, *, expected_type: str | tuple[str, ...]
    ) -> Identity: ...


class Refused(Exception):
    """A call refused before it is served: the status the caller gets."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class Identities:
    """Peer checks of one server: certificates, revocations, authorities."""

    def __init__(
        self,
        *,
        crl_path: Path,
        ca_pem: bytes,
        job_credentials: JobCredentialAuthority,
        on_new_crl: Callable[[frozenset[int]], None] = lambda revoked: None,
        on_refused: Callable[[str, str], None] = lambda peer, why: None,
    ) -> None:
        self._crl_path = crl_path
        self._ca_pem = ca_pem
        self._job_credentials = job_credentials
        # Told the serials of each newly loaded CRL: sessions opened before
        # the revocation end then, not at their next call.
        self._on_new_crl = on_new_crl
        # Told (peer address, why) of each call refused here: the audit trail.
        self._on_refused = on_refused
        self._crl_mtime: float | None = None
        self._revoked: frozenset[int] = frozenset()
        self._identities: dict[bytes, Identity | str] = {}

    def identify(
        self, context: grpc.ServicerContext, *, expected_type: str | tuple[str, ...]
    ) -> Identity:
        """The caller's identity from its verified certificate, or abort the call."""
        try:
            return self.check_peer(context, expected_type)
        except Refused as refused:
            self._on_refused(context.peer(), refused.details)
            context.abort(refused.code, refused.details)
            raise AssertionError("unreachable: abort raises") from None

    async def identify_aio(
        self, context: grpc.aio.ServicerContext, *, expected_type: str | tuple[str, ...]
    ) -> Identity:
        """:meth:`identify` for a call of the ``grpc.aio`` Fleet server."""
        try:
            return self.check_peer(context, expected_type)
        except Refused as refused:
            self._on_refused(context.peer(), refused.details)
            await context.abort(refused.code, refused.details)
            raise AssertionError("unreachable: abort raises") from None

    def check_peer(self, context: Any, expected_type: str | tuple[str, ...]) -> Identity:
        """The checks of both ``identify`` methods; raises :class:`Refused`."""
        pem = peer_cert_pem(context)
        if pem is None:
            log.warning("refused %s: no client certificate", context.peer())
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
        who = self.identity(pem)
        if isinstance(who, str):
            log.warning("refused %s: %s", context.peer(), who)
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, who)
        revoked = self.revoked_serials()
        if who.serial in revoked or (who.site_serial is not None and who.site_serial in revoked):
            log.warning("refused %s (%s): certificate revoked", who.name, context.peer())
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, f"certificate of {who.name} is revoked")
        allowed = (expected_type,) if isinstance(expected_type, str) else expected_type
        if who.type not in allowed:
            log.warning(
                "refused %s (%s): %s %s certificate on the %s port",
                who.name,
                context.peer(),
                "an" if who.type[:1] in "aeiou" else "a",
                who.type,
                "admin" if "admin" in allowed else "site",
            )
            raise Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{who.name} is a {who.type}; this port serves {allowed[0]}s only"
                if len(allowed) == 1
                else f"{who.name} is a {who.type}; this call serves {' or '.join(allowed)}s only",
            )
        return who

    def identity(self, pem: bytes) -> Identity | str:
        """Who ``pem`` is, or why it is refused (a str).

        A worker certificate counts only if the job credential authority
        signed it, and that authority signs nothing else: a project
        certificate cannot pass for a worker, nor a worker for a site.
        """
        # Every call carries the (already verified) certificate; parsing it
        # each time was most of a heartbeat's cost with 1000 sites connected.
        who = self._identities.get(pem)
        if who is None:
            if len(self._identities) > _MAX_CACHED:
                self._identities.clear()
            who = identity_from_cert(pem)
            by_jobs = self._job_credentials.issued(pem)
            if by_jobs != (who.type == "worker"):
                who = f"{who.name}: a {who.type} certificate from the wrong authority"
            self._identities[pem] = who
        return who

    def revoked_serials(self) -> frozenset[int]:
        """The serials the CRL revokes, read again whenever the file changes."""
        try:
            mtime = self._crl_path.stat().st_mtime
        except FileNotFoundError:
            return frozenset()
        if mtime != self._crl_mtime:
            self._revoked = load_revoked_serials(self._crl_path, self._ca_pem)
            self._crl_mtime = mtime
            log.info("loaded revocation list: %d revoked certificate(s)", len(self._revoked))
            self._on_new_crl(self._revoked)
        return self._revoked
