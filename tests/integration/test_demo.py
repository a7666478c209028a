"""`shoal demo` and `shoal poc start` leave no process behind, even on Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

HELLO_NUMPY = Path(__file__).resolve().parents[2] / "examples" / "hello-numpy"


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def _wait_gone(text: str, timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    left = _processes_mentioning(text)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _processes_mentioning(text)
    return left


def _run_until(cmd: list[str], marker: str, timeout: float = 120.0) -> subprocess.Popen[str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            return proc
        if time.monotonic() > deadline:
            break
    proc.kill()
    pytest.fail(f"never saw {marker!r}; output:\n{''.join(seen)}")


@pytest.mark.slow
def test_demo_with_numpy_job_completes_and_cleans_up(tmp_path: Path) -> None:
    ws = tmp_path / "demo"
    out = subprocess.run(
        [sys.executable, "-m", "shoal", "demo", "-w", str(ws), "--job", str(HELLO_NUMPY)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FINISHED:COMPLETED" in out.stdout
    assert "| JOB ID" in out.stdout
    assert "watch it live in a browser: http://127.0.0.1:" in out.stdout
    assert _wait_gone(str(ws)) == []


@pytest.mark.slow
def test_sigint_during_demo_leaves_no_process(tmp_path: Path) -> None:
    ws = tmp_path / "demo"
    # A job long enough that the interrupt lands mid-run.
    job = tmp_path / "long-job"
    shutil.copytree(HELLO_NUMPY, job)
    spec = (job / "job.yml").read_text()
    (job / "job.yml").write_text(spec.replace("num_rounds: 5", "num_rounds: 100000"))
    proc = _run_until(
        [sys.executable, "-m", "shoal", "demo", "-w", str(ws), "--job", str(job)],
        "Submitted job",
    )
    proc.send_signal(signal.SIGINT)
    assert proc.stdout is not None
    proc.stdout.read()
    proc.stdout.close()
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert _wait_gone(str(ws)) == []


@pytest.mark.slow
def test_sigint_during_poc_start_leaves_no_process(tmp_path: Path) -> None:
    ws = tmp_path / "poc"
    subprocess.run(
        [sys.executable, "-m", "shoal", "poc", "-w", str(ws), "prepare", "-n", "2"],
        check=True,
        capture_output=True,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal", "poc", "-w", str(ws), "start"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Interrupt as soon as the server process exists, i.e. mid start-up.
    deadline = time.monotonic() + 60
    while not (ws / "poc" / "pids" / "server1.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert _wait_gone(str(ws)) == []
    status = subprocess.run(
        [sys.executable, "-m", "shoal", "poc", "-w", str(ws), "status"],
        capture_output=True,
        text=True,
    )
    assert "running" not in status.stdout.replace("stopped", "")


def test_poc_start_and_stop(tmp_path: Path) -> None:
    ws = tmp_path / "poc"
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "shoal", "poc", "-w", str(ws), *a],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run("prepare", "-n", "3").returncode == 0
    started = run("start")
    assert started.returncode == 0, started.stdout + started.stderr
    assert "3 site(s) running and connected" in started.stdout
    status = run("status")
    assert status.returncode == 0 and status.stdout.count("running") == 4
    checked = run("admin", "--json", "check_status")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The dashboard for the POC's admin: the URL it prints logs a browser in.
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "shoal", "poc", "-w", str(ws), "dashboard", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert dashboard.stdout is not None
        lines = [dashboard.stdout.readline() for _ in range(2)]
        url = lines[-1].removeprefix("open ").strip()
        assert url.startswith("http://127.0.0.1:"), lines
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(url, timeout=30) as page:
            assert page.status == 200 and "<h1>Federation</h1>" in page.read().decode()
    finally:
        dashboard.terminate()
        dashboard.communicate(timeout=30)
    assert run("stop").returncode == 0
    assert _wait_gone(str(ws)) == []
    assert run("status").returncode == 1
