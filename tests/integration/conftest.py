"""Fixtures for tests with real processes: a POC federation on 127.0.0.1.

Every process is a real daemon started from a real startup kit (mutual TLS,
free ports); each fixture stops everything it started, even when a test fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shoal import poc
from shoal.admin.session import AdminSession

HELLO_NUMPY = Path(__file__).resolve().parents[2] / "examples" / "hello-numpy"
HELLO_TF2 = Path(__file__).resolve().parents[2] / "examples" / "hello-tf2"


class Federation:
    """A running POC federation plus helpers."""

    def __init__(self, workspace: Path, layout: poc.PocLayout) -> None:
        self.workspace = workspace
        self.layout = layout
        self._sessions: list[AdminSession] = []

    def admin(self) -> AdminSession:
        s = poc.admin_session(self.workspace)
        self._sessions.append(s)
        return s

    def pid(self, name: str) -> int:
        p = poc.status(self.workspace)["processes"][name]["pid"]
        assert p, f"{name} is not running"
        return int(p)

    def close(self) -> None:
        for s in self._sessions:
            s.close()
        poc.stop(self.workspace)


@pytest.fixture
def federation_factory(tmp_path: Path) -> Iterator:
    """Build a federation with options: ``federation_factory(num_sites=2, ...)``."""
    made: list[Federation] = []

    def make(num_sites: int = 2, **start_kw: object) -> Federation:
        ws = tmp_path / f"poc{len(made)}"
        poc.prepare(ws, num_sites=num_sites)
        env = {"SHOAL_MNIST_PATH": os.environ.get("SHOAL_MNIST_PATH", "")}
        layout = poc.start(ws, env=env, **start_kw)  # type: ignore[arg-type]
        fed = Federation(ws, layout)
        made.append(fed)
        return fed

    yield make
    for fed in made:
        fed.close()


@pytest.fixture
def federation(federation_factory) -> Federation:  # type: ignore[no-untyped-def]
    """server1 + site-1 + site-2, all connected."""
    fed: Federation = federation_factory(2)
    return fed


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``python -m shoal ...`` processes; each is stopped at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / f"proc{len(procs)}.out", "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "shoal", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
