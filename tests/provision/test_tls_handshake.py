"""Provisioned kits work for real mutual TLS with gRPC (accepted and rejected)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from shoal.provision import Kit, ProvisionResult, load_kit, provision

from .conftest import PROJECT_YML


@pytest.fixture(scope="module")
def server_port(provisioned: ProvisionResult) -> Iterator[int]:
    kit = load_kit(provisioned.kits["server1"], expected_type="server")
    creds = grpc.ssl_server_credentials(
        [(kit.tls.key_pem, kit.tls.cert_pem)],
        root_certificates=kit.tls.ca_pem,
        require_client_auth=True,
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    yield port
    server.stop(None)


def _check(kit: Kit, port: int, target: str = "server1") -> None:
    creds = grpc.ssl_channel_credentials(
        root_certificates=kit.tls.ca_pem,
        private_key=kit.tls.key_pem,
        certificate_chain=kit.tls.cert_pem,
    )
    options = [("grpc.ssl_target_name_override", target)]
    with grpc.secure_channel(f"127.0.0.1:{port}", creds, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        stub.Check(health_pb2.HealthCheckRequest(), timeout=5)


@pytest.mark.parametrize("name", ["site-1", "admin@nvidia.com"])
def test_handshake_accepted(provisioned: ProvisionResult, server_port: int, name: str) -> None:
    _check(load_kit(provisioned.kits[name]), server_port)


@pytest.mark.parametrize("target", ["localhost", "server1.shoal-infra.svc", "fl.example.com"])
def test_server_names_accepted(provisioned: ProvisionResult, server_port: int, target: str) -> None:
    _check(load_kit(provisioned.kits["site-1"]), server_port, target)


def test_other_project_rejected(
    provisioned: ProvisionResult, server_port: int, tmp_path: Path
) -> None:
    project = tmp_path / "project.yml"
    project.write_text(PROJECT_YML)
    stranger = load_kit(provision(project, tmp_path / "ws").kits["site-1"])
    with pytest.raises(grpc.RpcError) as info:
        _check(stranger, server_port)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def test_wrong_target_name_rejected(provisioned: ProvisionResult, server_port: int) -> None:
    with pytest.raises(grpc.RpcError):
        _check(load_kit(provisioned.kits["site-1"]), server_port, "not-the-server")
