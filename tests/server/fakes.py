"""Fakes for the server's parts: a gRPC servicer context and a fixed identity."""

from __future__ import annotations

from typing import Any

import grpc

from shoal.provision import Identity


class Aborted(Exception):
    """What a fake context's ``abort`` raises (gRPC's own raises too)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class FakeContext:
    """A servicer context with an optional client certificate."""

    def __init__(self, cert_pem: bytes | None = None, peer: str = "ipv4:127.0.0.1:5") -> None:
        self._cert_pem = cert_pem
        self._peer = peer
        self.written: list[Any] = []

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self._cert_pem]} if self._cert_pem else {}

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


class FakeAioContext(FakeContext):
    """:class:`FakeContext` for a ``grpc.aio`` servicer's coroutines."""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:  # type: ignore[override]
        raise Aborted(code, details)

    async def write(self, message: Any) -> None:
        self.written.append(message)


def admin(name: str = "admin@a", org: str = "a", role: str | None = "project_admin") -> Identity:
    return Identity(name=name, org=org, type="admin", role=role, serial=1)


def site(name: str = "site-1", org: str = "a") -> Identity:
    return Identity(name=name, org=org, type="client", role=None, serial=2)


def identify_as(who: Identity) -> Any:
    """An ``identify`` that says every caller is ``who``."""

    def identify(context: Any, *, expected_type: str | tuple[str, ...]) -> Identity:
        return who

    return identify


def identify_aio_as(who: Identity) -> Any:
    """An ``identify_aio`` that says every caller is ``who``."""

    async def identify(context: Any, *, expected_type: str | tuple[str, ...]) -> Identity:
        return who

    return identify
