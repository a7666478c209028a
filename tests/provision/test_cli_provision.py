"""`shoal provision` from the command line: output and exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shoal.cli.app import main

from .conftest import PROJECT_YML


def test_init_then_provision(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project.yml"
    workspace = tmp_path / "ws"
    assert main(["provision", "--init", "-p", str(project)]) == 0
    assert project.exists()
    assert main(["provision", "--init", "-p", str(project)]) == 2
    assert "already exists" in capsys.readouterr().err

    assert main(["provision", "-p", str(project), "-w", str(workspace)]) == 0
    out = capsys.readouterr().out
    assert "created root CA" in out
    assert f"wrote 4 startup kits to {workspace / 'example_project' / 'prod_00'}" in out
    assert main(["provision", "-p", str(project), "-w", str(workspace)]) == 0
    assert "reused root CA" in capsys.readouterr().out
    assert (workspace / "example_project" / "prod_01" / "site-2").is_dir()


def test_config_error_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project.yml"
    project.write_text(PROJECT_YML.replace("admin_port: 8003", "admin_port: 8002"))
    assert main(["provision", "-p", str(project), "-w", str(tmp_path / "ws")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {project}: participants[0].admin_port: equals fed_learn_port (8002)")
    assert not (tmp_path / "ws").exists()
    assert main(["provision", "-p", str(project), "--validity-days", "0"]) == 2


def test_unwritable_workspace_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project.yml"
    project.write_text(PROJECT_YML)
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    assert main(["provision", "-p", str(project), "-w", str(blocker)]) == 1
    assert capsys.readouterr().err.startswith("error: workspace: ")


def test_revoke_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project.yml"
    project.write_text(PROJECT_YML)
    ws = str(tmp_path / "ws")
    assert main(["provision", "--revoke", "site-1", "-p", str(project), "-w", ws]) == 4
    assert main(["provision", "-p", str(project), "-w", ws]) == 0
    assert main(["provision", "--revoke", "site-1", "-p", str(project), "-w", ws]) == 0
    assert "revoked site-1" in capsys.readouterr().out
    assert (
        tmp_path / "ws" / "example_project" / "prod_00" / "server1" / "local" / "crl.pem"
    ).exists()


def test_nvflare_builders_printed(tmp_path: Path) -> None:
    """Through a real `python -m shoal` process, as an operator would run it."""
    project = tmp_path / "project.yml"
    project.write_text(
        PROJECT_YML
        + "builders:\n"
        + "  - path: nvflare.lighter.impl.workspace.WorkspaceBuilder\n"
        + "    args: {template_file: master_template.yml}\n"
        + "  - path: nvflare.lighter.impl.helm_chart.HelmChartBuilder\n"
        + "    args: {docker_image: localhost:32000/nvfl-min:0.0.1}\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "shoal",
            "provision",
            "-p",
            str(project),
            "-w",
            str(tmp_path / "ws"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sum("WorkspaceBuilder: mapped" in line for line in lines) == 1
    helm = [line for line in lines if "HelmChartBuilder: ignored" in line]
    assert len(helm) == 1 and "shoal deploy k8s" in helm[0]
