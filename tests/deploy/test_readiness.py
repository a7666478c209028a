"""A site's readiness follows its connection to the server (issue 19, item 4).

Real daemons from real kits on loopback: a site with no server to dial is
alive but not ready; once the server is up and the site connected it is ready;
when the server goes away it is not ready again. The generated manifests ask
for exactly the service these tests query.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shoal.client.daemon import SiteDaemon, SiteOptions
from shoal.deploy import K8sOptions, write_manifests
from shoal.deploy.healthcheck import check
from shoal.poc import free_ports
from shoal.provision import load_kit
from shoal.server.daemon import ServerDaemon, ServerOptions
from shoal.transport.health import FLEET_SERVICE, SITE_SERVICE

from .conftest import provision_example


def _until(what: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if what():
            return True
        time.sleep(0.1)
    return what()


def test_site_is_ready_only_while_connected(tmp_path: Path) -> None:
    fed, admin, health = free_ports(3)
    prod = provision_example(tmp_path, fed, admin, health)
    site = SiteDaemon(
        load_kit(prod / "site-1"),
        SiteOptions(
            server_address=f"127.0.0.1:{fed}",
            workspace=tmp_path / "site-ws",
            health_port=0,
            max_backoff_s=0.5,
        ),
    )
    with site:
        port = site.health_port
        assert port
        # Give it time to try (and fail) to dial a server that is not there.
        time.sleep(1.0)
        assert check(port), "a disconnected site is still alive"
        assert not check(port, service=SITE_SERVICE), "a disconnected site must not be ready"

        server = ServerDaemon(
            load_kit(prod / "server1"),
            ServerOptions(
                host="127.0.0.1",
                fed_port=fed,
                admin_port=0,
                health_port=health,
                workspace=tmp_path / "server-ws",
            ),
        )
        with server:
            assert check(health, service=FLEET_SERVICE)
            assert site.connected.wait(30), "the site never connected"
            assert _until(lambda: check(port, service=SITE_SERVICE)), "connected but not ready"
        # The server is gone: ready no more, alive still.
        assert _until(lambda: not check(port, service=SITE_SERVICE)), "ready with no server"
        assert check(port)


def test_manifests_ask_for_those_services(make_prod: Callable[..., Path], tmp_path: Path) -> None:
    from .test_k8s import KUBECTL, one, render

    if KUBECTL is None:
        pytest.skip("kubectl not installed")
    out = tmp_path / "k8s"
    write_manifests(make_prod(), out, K8sOptions())
    site = one(render(out / "overlays" / "site-1"), "Deployment")
    (container,) = site["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["grpc"]["service"] == SITE_SERVICE
    assert "service" not in container["livenessProbe"]["grpc"]
    server = one(render(out / "overlays" / "server1"), "Deployment")
    (container,) = server["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["grpc"]["service"] == FLEET_SERVICE
