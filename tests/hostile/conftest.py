"""Fixtures for hostile-input tests: real federations (tests/faults/harness.py)
and raw gRPC stubs holding a participant's real key."""

from __future__ import annotations

from pathlib import Path

import grpc
from faults.harness import Fed

from shoal._proto import shoal_pb2_grpc as pb_grpc
from shoal.provision import load_kit
from shoal.transport import TLSConfig
from shoal.transport.tls import channel_credentials


def raw_channel(tls: TLSConfig, port: int, *, unlimited: bool = False) -> grpc.Channel:
    """A channel to 127.0.0.1:port with ``tls``; ``unlimited`` lifts our own send cap
    so a test can send what a well-behaved peer never would."""
    options = [
        ("grpc.ssl_target_name_override", "server1"),
        ("grpc.default_authority", "server1"),
    ]
    if unlimited:
        options += [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    return grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials(tls), options=options)


def kit_tls(kit: Path) -> TLSConfig:
    return TLSConfig.of(load_kit(kit).tls)


def fleet_stub(fed: Fed, who: str, *, unlimited: bool = False) -> pb_grpc.FleetStub:
    return pb_grpc.FleetStub(raw_channel(kit_tls(fed.kits[who]), fed.fed_port, unlimited=unlimited))


def admin_stub(fed: Fed, tls: TLSConfig) -> pb_grpc.AdminStub:
    return pb_grpc.AdminStub(raw_channel(tls, fed.admin_port))
