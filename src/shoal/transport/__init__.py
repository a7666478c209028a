"""gRPC channels and servers with mutual TLS, chunked streams, error mapping."""

from __future__ import annotations

from shoal.transport.channels import (
    from_rpc_error,
    open_channel,
    peer_cert_pem,
    rpc_errors,
    start_server,
)
from shoal.transport.frames import (
    CHUNK_SIZE,
    PayloadHeader,
    ReceivedPayload,
    frames_from_bytes,
    frames_from_file,
    read_header,
    receive_bytes,
    receive_to_file,
    receive_to_memory,
)
from shoal.transport.tls import TLSConfig, channel_credentials, server_credentials

__all__ = [
    "CHUNK_SIZE",
    "PayloadHeader",
    "ReceivedPayload",
    "TLSConfig",
    "channel_credentials",
    "frames_from_bytes",
    "frames_from_file",
    "from_rpc_error",
    "open_channel",
    "peer_cert_pem",
    "read_header",
    "receive_bytes",
    "receive_to_file",
    "receive_to_memory",
    "rpc_errors",
    "server_credentials",
    "start_server",
]
