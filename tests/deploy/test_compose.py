"""deploy/docker-compose.yml: parses, has the services and healthchecks a host needs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import MakeProd

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "docker-compose.yml"


def _services() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    services: dict[str, Any] = data["services"]
    return services


def test_services_and_healthchecks() -> None:
    services = _services()
    assert set(services) == {"server", "site-1", "site-2"}
    health_ports = []
    for name, svc in services.items():
        assert svc["healthcheck"]["test"][:4] == [
            "CMD",
            "python3",
            "-m",
            "shoal.deploy.healthcheck",
        ]
        port = svc["healthcheck"]["test"][4]
        assert svc["environment"]["SHOAL_HEALTH_PORT"] == port, "the daemon serves what is asked"
        health_ports.append(port)
        assert svc["read_only"] is True
        # Host networking only: every port is the host's, no `ports:` (item 13).
        assert svc["network_mode"] == "host" and "ports" not in svc, name
        assert svc["user"] == "${SHOAL_UID:-10001}:${SHOAL_GID:-10001}", "not root by default"
        kit, data = svc["volumes"]
        assert "${SHOAL_PROD_DIR:?" in kit, "the prod dir comes from the environment"
        # The same data switch for the server as for the sites (item 10).
        assert data.startswith("${SHOAL_DATA_DIR:?") and data.endswith(":/data:ro"), name
        assert svc["environment"]["SHOAL_MNIST_PATH"] == "/data/${SHOAL_MNIST_FILE:-mnist.npz}"
        assert svc["environment"]["SHOAL_DATA_PATHS"] == "/data"
        assert svc["stop_grace_period"] == "60s"
    assert len(set(health_ports)) == 3, "one host: each daemon its own health port"
    assert services["server"]["command"] == ["server"]
    assert services["server"]["environment"]["SHOAL_STOP_GRACE_S"] == "${SHOAL_STOP_GRACE_S:-45}"
    for site in ("site-1", "site-2"):
        svc = services[site]
        assert svc["command"] == ["client"]
        assert svc["environment"]["SHOAL_SERVER_ADDRESS"].startswith("127.0.0.1:")
        assert svc["depends_on"]["server"]["condition"] == "service_healthy"


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_config_resolves(make_prod: MakeProd) -> None:
    """`docker compose config` needs no engine: interpolation and schema are checked."""
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    prod = make_prod()
    env = {**os.environ, "SHOAL_PROD_DIR": str(prod), "SHOAL_DATA_DIR": str(prod / "data")}
    for name in ("SHOAL_UID", "SHOAL_GID"):
        env.pop(name, None)
    result = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]
    volume = resolved["site-2"]["volumes"][0]
    source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
    assert source == str(prod / "site-2")
    for name, svc in resolved.items():
        assert svc["network_mode"] == "host" and "ports" not in svc, name
        # Unset SHOAL_UID/SHOAL_GID: the image's user, never root.
        assert svc["user"] == "10001:10001", name
        assert svc["environment"]["SHOAL_MNIST_PATH"] == "/data/mnist.npz", name
    ports = {svc["environment"]["SHOAL_HEALTH_PORT"] for svc in resolved.values()}
    assert ports == {"8004", "8005", "8006"}
    # Without the prod dir the file refuses to resolve instead of mounting "/server1".
    env.pop("SHOAL_PROD_DIR")
    missing = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config"], capture_output=True, text=True, env=env, timeout=60
    )
    assert missing.returncode != 0
    assert "SHOAL_PROD_DIR" in missing.stderr
