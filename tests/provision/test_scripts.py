"""The kit's bash scripts, run for real with a fake interpreter in SHOAL_PYTHON."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from shoal.provision import ProvisionResult

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python: logs its arguments, exits with the next code of $FAKE_CODES.
echo "$*" >>"$FAKE_LOG"
n=$(wc -l <"$FAKE_LOG")
code=$(sed -n "${n}p" "$FAKE_CODES" 2>/dev/null || true)
if [[ "$code" == "sleep" ]]; then echo $$ >"$FAKE_LOG.pid"; exec sleep 30; fi
if [[ "$code" == "shutdown" ]]; then touch "$KIT_FOR_FAKE/shutdown.fl"; exit 3; fi
exit "${code:-0}"
"""


@pytest.fixture
def kit(provisioned: ProvisionResult, tmp_path: Path) -> Path:
    """A copy of site-1's kit in a different place (scripts must not care)."""
    target = tmp_path / "moved" / "site-1"
    shutil.copytree(provisioned.kits["site-1"], target)
    return target


def _env(tmp_path: Path, kit: Path, codes: list[str]) -> dict[str, str]:
    fake = tmp_path / "fakepy"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    (tmp_path / "codes").write_text("".join(f"{c}\n" for c in codes))
    return {
        **os.environ,
        "SHOAL_PYTHON": str(fake),
        "SHOAL_RESTART_DELAY": "0",
        "FAKE_LOG": str(tmp_path / "calls"),
        "FAKE_CODES": str(tmp_path / "codes"),
        "KIT_FOR_FAKE": str(kit),
    }


def _calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "calls"
    return path.read_text().splitlines() if path.exists() else []


def test_scripts_parse(provisioned: ProvisionResult) -> None:
    scripts = list(provisioned.prod_dir.glob("*/startup/*.sh"))
    assert len(scripts) == 3 * 3 + 2
    for script in scripts:
        text = script.read_text()
        assert text.startswith("#!/usr/bin/env bash\n")
        assert "set -euo pipefail" in text
        assert '"${SHOAL_PYTHON:-python3}"' in text or script.name in {"start.sh", "stop_fl.sh"}
        subprocess.run(["bash", "-n", str(script)], check=True, timeout=10)


def test_sub_start_restarts_until_clean_exit(kit: Path, tmp_path: Path) -> None:
    env = _env(tmp_path, kit, ["75", "3", "0"])
    result = subprocess.run(
        ["bash", str(kit / "startup" / "sub_start.sh"), "--extra"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert _calls(tmp_path) == [f"-m shoal client --kit {kit} --extra"] * 3
    assert "restart requested" in result.stderr
    assert "exited with code 3" in result.stderr


def test_sub_start_stops_on_shutdown_file(kit: Path, tmp_path: Path) -> None:
    env = _env(tmp_path, kit, ["shutdown", "0"])
    result = subprocess.run(
        [str(kit / "startup" / "sub_start.sh")], env=env, capture_output=True, timeout=30
    )
    assert result.returncode == 0
    assert len(_calls(tmp_path)) == 1


def test_server_sub_start_runs_server(provisioned: ProvisionResult, tmp_path: Path) -> None:
    server = tmp_path / "server1"
    shutil.copytree(provisioned.kits["server1"], server)
    env = _env(tmp_path, server, ["0"])
    subprocess.run([str(server / "startup" / "sub_start.sh")], env=env, check=True, timeout=30)
    assert _calls(tmp_path) == [f"-m shoal server --kit {server}"]


def test_start_and_stop(kit: Path, tmp_path: Path) -> None:
    env = _env(tmp_path, kit, ["sleep"])
    started = subprocess.run(
        [str(kit / "startup" / "start.sh")], env=env, capture_output=True, text=True, timeout=30
    )
    assert started.returncode == 0, started.stderr
    pid_file = kit / "daemon_pid.fl"
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while not _calls(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _calls(tmp_path) == [f"-m shoal client --kit {kit}"]

    again = subprocess.run(
        [str(kit / "startup" / "start.sh")], env=env, capture_output=True, text=True, timeout=30
    )
    assert again.returncode == 1 and "already running" in again.stderr

    stopped = subprocess.run(
        [str(kit / "startup" / "stop_fl.sh")], env=env, capture_output=True, text=True, timeout=40
    )
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "stopped" in stopped.stdout
    assert (kit / "shutdown.fl").exists()
    assert not pid_file.exists()
    assert len(_calls(tmp_path)) == 1  # not restarted
    assert (kit / "daemon.out").exists()
    daemon = int((tmp_path / "calls.pid").read_text())
    for process in (pid, daemon):  # supervisor and daemon both ended
        assert _gone(process), process


def _gone(pid: int) -> bool:
    """True if ``pid`` has exited (a zombie nobody reaped yet counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/status")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if "\nState:\tZ" in status.read_text():
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_stop_when_not_running(kit: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(kit / "startup" / "stop_fl.sh")], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0 and "not running" in result.stdout


def test_fl_admin(provisioned: ProvisionResult, tmp_path: Path) -> None:
    admin = tmp_path / "admin@nvidia.com"
    shutil.copytree(provisioned.kits["admin@nvidia.com"], admin)
    env = _env(tmp_path, admin, ["0"])
    subprocess.run(
        [str(admin / "startup" / "fl_admin.sh"), "list_jobs"], env=env, check=True, timeout=30
    )
    assert _calls(tmp_path) == [f"-m shoal admin --kit {admin} list_jobs"]
