"""python -m shoal.deploy.healthcheck against a real grpc.health.v1 server on loopback."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from shoal.deploy.healthcheck import check, default_port, main


@pytest.fixture
def health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, servicer
    finally:
        server.stop(None)


def test_serving_and_not(health_server: tuple[int, health.HealthServicer]) -> None:
    port, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert check(port)
    assert main([str(port)]) == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert not check(port)
    assert main([str(port)]) == 1


def test_nothing_listening() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert not check(port, timeout=0.5)


def test_the_image_healthcheck_finds_the_port(
    health_server: tuple[int, health.HealthServicer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No argument (the image's HEALTHCHECK): SHOAL_HEALTH_PORT, else the server kit's."""
    port, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    (tmp_path / "startup").mkdir()
    monkeypatch.setenv("SHOAL_KIT_DIR", str(tmp_path))
    monkeypatch.delenv("SHOAL_HEALTH_PORT", raising=False)
    assert default_port() is None and main([]) == 0  # a site without one: nothing to ask
    (tmp_path / "startup" / "fed_server.json").write_text(json.dumps({"admin_port": port - 1}))
    assert default_port() == port and main([]) == 0
    (tmp_path / "startup" / "fed_server.json").write_text(json.dumps({"health_port": 1 + port}))
    assert main([]) == 1, "the kit's health_port wins over admin_port + 1"
    monkeypatch.setenv("SHOAL_HEALTH_PORT", str(port))
    assert default_port() == port and main([]) == 0
