"""gRPC channels and servers with shoal's options, and the error edge.

protobuf types and grpc errors never leave the transport layer: servicers
call ``rpc_errors`` to turn shoal exceptions into status codes, and clients
call ``from_rpc_error`` to turn status codes back into shoal exceptions.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc

from shoal.errors import (
    BusyError,
    ConfigError,
    IntegrityError,
    JobValidationError,
    NotAuthorizedError,
    NotFoundError,
    PeerRejectedError,
    ShoalError,
    TransportError,
    UnavailableError,
)
from shoal.transport.frames import MAX_MESSAGE_BYTES
from shoal.transport.tls import TLSSource, channel_credentials, server_credentials

__all__ = [
    "aio_rpc_errors",
    "bind_port",
    "channel_options",
    "from_rpc_error",
    "open_channel",
    "peer_cert_pem",
    "rpc_errors",
    "server_options",
    "start_server",
]

log = logging.getLogger(__name__)

_COMMON_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]

# gRPC's own retries, for the job worker's Work stream (shoal.client.worker).
# waitForReady: a call made while the server is unreachable (restarting)
# waits for the channel to connect, however long, instead of failing at once;
# the reconnect backoff below paces the attempts. retryPolicy: a call the
# server ended before answering anything is made again, its "ready" replayed
# by gRPC: NOT_FOUND (a restarted server that has not resumed the job yet),
# UNAVAILABLE (the connection dropped). gRPC allows 5 attempts at most, about
# 3 s with this backoff. It never retries a call once the server has answered
# on it, and a Work stream has as soon as its first task came: a stream broken
# later, and a NOT_FOUND that outlasts 5 attempts, are for the worker's own
# loop. Connect stays fail-fast: the site daemon logs every failed attempt
# with its reason (a refused handshake, a certificate naming another server),
# which a call waiting for the channel would never show.
_SERVICE_CONFIG = {
    "methodConfig": [
        {
            "name": [{"service": "shoal.v1.Fleet", "method": "Work"}],
            "waitForReady": True,
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.2s",
                "maxBackoff": "5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE", "NOT_FOUND"],
            },
        }
    ]
}

# Keepalive: a held stream across a dead link (cable cut, node gone) is found
# out within ~15 s instead of the kernel's TCP timeout of many minutes.
_CLIENT_OPTIONS = [
    *_COMMON_OPTIONS,
    ("grpc.service_config", json.dumps(_SERVICE_CONFIG)),
    ("grpc.enable_retries", 1),
    # Ours alone: no DNS record of the server's name changes how a site retries.
    ("grpc.service_config_disable_resolution", 1),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect quickly after a server restart; our own loops add jitter.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    # A fixed 4 MiB receive window per stream. gRPC's default grows it with
    # its bandwidth estimate, and a worker starved of CPU (many sites on one
    # machine) then buffered far ahead of itself: its peak grew from 280 MiB
    # (2 sites) to 360-380 MiB (32 sites) with a 100 MiB model; 280-286 now
    # at 2 / 8 / 32 sites. The 100 MiB round was no slower (bench/memory.py,
    # bench/transfer.py).
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 4 * 1024 * 1024),
]
_SERVER_OPTIONS = [
    *_COMMON_OPTIONS,
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.so_reuseport", 0),
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 1024 * 1024),
    # A call the server has not picked up within this time is cancelled by
    # gRPC (default 30 s). When a thousand sites start a job at once the
    # server's Python side picks calls up slower than that, and sites saw
    # their FetchJob / Work calls end CANCELLED: queue them instead.
    ("grpc.server_max_unrequested_time_in_server", 600),
]


def open_channel(address: str, tls: TLSSource, *, server_name: str) -> grpc.Channel:
    """A mutual-TLS channel to ``address`` that insists the server is ``server_name``.

    The name check is independent of the address dialled, so a site can reach
    the server through a load balancer, a port-forward or 127.0.0.1.
    """
    return grpc.secure_channel(
        address, channel_credentials(tls), options=channel_options(server_name)
    )


def channel_options(server_name: str) -> list[tuple[str, Any]]:
    """The options of :func:`open_channel` (for a ``grpc.aio`` channel, say)."""
    return [
        *_CLIENT_OPTIONS,
        ("grpc.ssl_target_name_override", server_name),
        ("grpc.default_authority", server_name),
    ]


def start_server(
    *,
    host: str,
    port: int,
    tls: TLSSource | None,
    register: list,
    max_workers: int = 4096,
) -> tuple[grpc.Server, int]:
    """Start a gRPC server with our options; returns it and the bound port.

    ``tls=None`` makes a plaintext server: only for the health service.
    ``register`` holds callables ``f(server)`` adding servicers. (The server
    daemon's Fleet port is a ``grpc.aio`` server instead: ``transport.aio``.)
    """
    # Held streams each occupy a worker thread; threads are created lazily,
    # so a large cap costs nothing until calls come.
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=server_options(),
        maximum_concurrent_rpcs=None,
    )
    for add in register:
        add(server)
    bound = bind_port(server, host, port, tls)
    server.start()
    return server, bound


def server_options() -> list[tuple[str, Any]]:
    """The options every shoal server is made with (sync or ``grpc.aio``)."""
    return list(_SERVER_OPTIONS)


def bind_port(
    server: grpc.Server | grpc.aio.Server, host: str, port: int, tls: TLSSource | None
) -> int:
    """Listen on ``host:port`` (mutual TLS unless ``tls`` is None); the port bound."""
    address = f"{host}:{port}"
    try:
        if tls is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, server_credentials(tls))
    except RuntimeError as exc:
        raise TransportError(f"cannot listen on {address}: {exc}") from exc
    if bound == 0:
        raise TransportError(f"cannot listen on {address} (in use or not permitted)")
    return bound


def peer_cert_pem(context: grpc.ServicerContext) -> bytes | None:
    """The verified client certificate of this call, or None."""
    auth = context.auth_context()
    certs = auth.get("x509_pem_cert")
    return certs[0] if certs else None


_TO_STATUS: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (NotAuthorizedError, grpc.StatusCode.PERMISSION_DENIED),
    (PeerRejectedError, grpc.StatusCode.PERMISSION_DENIED),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (IntegrityError, grpc.StatusCode.DATA_LOSS),
    (JobValidationError, grpc.StatusCode.INVALID_ARGUMENT),
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (BusyError, grpc.StatusCode.ABORTED),
    (ShoalError, grpc.StatusCode.FAILED_PRECONDITION),
]
_FROM_STATUS: dict[grpc.StatusCode, type[ShoalError]] = {
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: UnavailableError,
    grpc.StatusCode.PERMISSION_DENIED: NotAuthorizedError,
    grpc.StatusCode.UNAUTHENTICATED: PeerRejectedError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.DATA_LOSS: IntegrityError,
    grpc.StatusCode.INVALID_ARGUMENT: JobValidationError,
    grpc.StatusCode.ABORTED: BusyError,
}


@contextlib.contextmanager
def rpc_errors(context: grpc.ServicerContext, what: str) -> Iterator[None]:
    """The one place shoal exceptions become gRPC status codes."""
    try:
        yield
    except ShoalError as exc:
        context.abort(_refusal(exc, what), str(exc))


@contextlib.asynccontextmanager
async def aio_rpc_errors(context: grpc.aio.ServicerContext, what: str) -> AsyncIterator[None]:
    """:func:`rpc_errors` for the coroutine methods of a ``grpc.aio`` servicer."""
    try:
        yield
    except ShoalError as exc:
        await context.abort(_refusal(exc, what), str(exc))


def _refusal(exc: ShoalError, what: str) -> grpc.StatusCode:
    log.warning("%s refused: %s", what, exc)
    return next(c for t, c in _TO_STATUS if isinstance(exc, t))


def from_rpc_error(exc: grpc.RpcError, what: str) -> ShoalError:
    """Turn a failed call into a shoal exception with the server's reason:
    :class:`UnavailableError` where trying again later may succeed."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    cls = _FROM_STATUS.get(code, TransportError) if code is not None else TransportError
    if cls in (TransportError, UnavailableError):
        return cls(f"{what}: {details or code}")
    return cls(details or f"{what}: {code}")
