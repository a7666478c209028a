"""Shared fixtures: project files and one provisioned workspace per module."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from shoal.provision import SAMPLE_PROJECT_YML, ProvisionResult, provision

PROJECT_YML = """\
api_version: 3
name: example_project
description: test project
participants:
  - name: server1
    type: server
    org: nvidia
    fed_learn_port: 8002
    admin_port: 8003
    host_names: [fl.example.com, 10.1.2.3]
  - name: site-1
    type: client
    org: nvidia
  - name: site-2
    type: client
    org: org2
  - name: admin@nvidia.com
    type: admin
    org: nvidia
    role: project_admin
  - name: lead@org2.com
    type: admin
    org: org2
    role: lead
"""


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 (or 'dir') of everything under ``root``."""
    if not root.exists():
        return {}
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture
def write_project(tmp_path: Path) -> Callable[[str], Path]:
    """Write a project file with the given text and return its path."""

    def write(text: str, name: str = "project.yml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> ProvisionResult:
    """One provision run of PROJECT_YML (shared by a module's read-only tests)."""
    base = tmp_path_factory.mktemp("prov")
    project = base / "project.yml"
    project.write_text(PROJECT_YML, encoding="utf-8")
    return provision(project, base / "workspace")


@pytest.fixture(scope="module")
def sample_provisioned(tmp_path_factory: pytest.TempPathFactory) -> ProvisionResult:
    """One provision run of the --init sample."""
    base = tmp_path_factory.mktemp("sample")
    project = base / "project.yml"
    project.write_text(SAMPLE_PROJECT_YML, encoding="utf-8")
    return provision(project, base / "workspace")
