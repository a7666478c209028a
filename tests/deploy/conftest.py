"""Fake provisioned prod dirs: just the files `shoal deploy` reads and copies."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

FAKE_KEY = "-----BEGIN EC PRIVATE KEY-----\nfake key of {name}\n-----END EC PRIVATE KEY-----\n"
FAKE_CERT = "-----BEGIN CERTIFICATE-----\nfake cert of {name}\n-----END CERTIFICATE-----\n"

MakeProd = Callable[..., Path]


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)


def make_prod_dir(
    root: Path,
    *,
    server: str = "server1",
    sites: tuple[str, ...] = ("site-1", "site-2"),
    kubernetes: bool = True,
    gpus: dict[str, int] | None = None,
) -> Path:
    """A prod_00 folder with a server, ``sites`` and an admin, as provisioning lays it out."""
    prod = root / "workspace" / "example_project" / "prod_00"
    cfg: dict[str, object] = {
        "format": 1,
        "project": "example_project",
        "name": server,
        "type": "server",
        "org": "nvidia",
        "fed_learn_port": 8002,
        "admin_port": 8003,
        "host_names": [server, "localhost"],
        "heartbeat_timeout_s": 30,
        "participants": [{"name": s, "type": "client", "org": "nvidia"} for s in sites],
    }
    if kubernetes:
        cfg["health_port"] = 8004
        cfg["kubernetes"] = {"namespace": "fl-infra", "service": "fl-server"}
    startup = prod / server / "startup"
    _write(startup / "fed_server.json", json.dumps(cfg))
    _write(startup / "server.key", FAKE_KEY.format(name=server), 0o600)
    _write(startup / "server.crt", FAKE_CERT.format(name=server))
    _write(startup / "rootCA.pem", FAKE_CERT.format(name="ca"))
    _write(startup / "start.sh", "#!/bin/sh\n", 0o755)
    _write(startup / "signature.json", "{}")
    _write(prod / server / "local" / "log_config.json", "{}")
    for site in sites:
        site_cfg: dict[str, object] = {
            "format": 1,
            "project": "example_project",
            "name": site,
            "type": "client",
            "org": "nvidia",
            "server": {"name": server, "host": server, "fed_learn_port": 8002},
        }
        if kubernetes:
            site_cfg["kubernetes"] = {"namespace": f"fl-{site}"}
        startup = prod / site / "startup"
        _write(startup / "fed_client.json", json.dumps(site_cfg))
        _write(startup / "client.key", FAKE_KEY.format(name=site), 0o600)
        _write(startup / "client.crt", FAKE_CERT.format(name=site))
        _write(startup / "rootCA.pem", FAKE_CERT.format(name="ca"))
        _write(startup / "signature.json", "{}")
        if gpus and site in gpus:
            resources = {"format": 1, "resources": {"gpus": gpus[site]}}
            _write(prod / site / "local" / "resources.json", json.dumps(resources))
    admin = prod / "admin@nvidia.com" / "startup"
    _write(admin / "fed_admin.json", json.dumps({"format": 1, "name": "admin@nvidia.com"}))
    _write(admin / "client.key", FAKE_KEY.format(name="admin"), 0o600)
    return prod


@pytest.fixture
def make_prod(tmp_path: Path) -> MakeProd:
    def make(**kwargs: object) -> Path:
        return make_prod_dir(tmp_path, **kwargs)  # type: ignore[arg-type]

    return make


def provision_example(
    tmp_path: Path, fed: int = 8002, admin: int = 8003, health: int = 8004
) -> Path:
    """Real kits (CA, keys, certificates) for server1, site-1, site-2 and an admin."""
    from shoal.provision import provision

    project = tmp_path / "project.yml"
    project.write_text(
        f"""\
api_version: 3
name: example_project
participants:
  - {{name: server1, type: server, org: nvidia, fed_learn_port: {fed}, admin_port: {admin}, health_port: {health}}}
  - {{name: site-1, type: client, org: nvidia}}
  - {{name: site-2, type: client, org: nvidia}}
  - {{name: admin@nvidia.com, type: admin, org: nvidia, role: project_admin}}
kubernetes:
  server_namespace: fl-infra
"""
    )
    result = provision(project, tmp_path / "workspace")
    return Path(result.prod_dir)
