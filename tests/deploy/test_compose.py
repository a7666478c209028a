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
    for name, svc in services.items():
        assert svc["healthcheck"]["test"][:4] == ["CMD", "python", "-m", "shoal.deploy.healthcheck"]
        assert svc["read_only"] is True
        assert not str(svc["user"]).startswith("0"), name
        (volume,) = svc["volumes"]
        assert "${SHOAL_PROD_DIR:?" in volume, "the prod dir comes from the environment"
    assert services["server"]["command"] == ["server"]
    for site in ("site-1", "site-2"):
        svc = services[site]
        assert svc["command"] == ["client", "--health-port", "8004"]
        assert svc["environment"]["SHOAL_SERVER_ADDRESS"].startswith("server:")
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
    env = {**os.environ, "SHOAL_PROD_DIR": str(prod), "SHOAL_UID": "1000", "SHOAL_GID": "1000"}
    result = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]
    volume = resolved["site-2"]["volumes"][0]
    source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
    assert source == str(prod / "site-2")
    # Without the prod dir the file refuses to resolve instead of mounting "/server1".
    env.pop("SHOAL_PROD_DIR")
    missing = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config"], capture_output=True, text=True, env=env, timeout=60
    )
    assert missing.returncode != 0
    assert "SHOAL_PROD_DIR" in missing.stderr
