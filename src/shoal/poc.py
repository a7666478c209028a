"""Proof-of-concept mode: a whole federation on this machine, real certificates.

    layout = prepare(Path("poc"), num_sites=2)   # project.yml + startup kits
    start(Path("poc"))                           # server + sites; returns when all are connected
    with admin_session(Path("poc")) as s:
        s.check_status()
    stop(Path("poc"))

The processes are real daemons started from real startup kits (mutual TLS on
loopback), each in its own process group, with pid files and output under
``WORKSPACE/poc/``. ``start`` cleans up what it started if it is interrupted
or fails, so Ctrl-C never leaves a process behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.errors import ConfigError, ShoalError

if TYPE_CHECKING:
    from shoal.admin.session import AdminSession

__all__ = [
    "PocLayout",
    "admin_session",
    "load_layout",
    "prepare",
    "start",
    "status",
    "stop",
]

log = logging.getLogger(__name__)

PROJECT = "poc_project"
STATE_FILE = "poc.json"

#: Daemons this process started, by pid: kept so ``stop`` can reap them (no
#: zombies, no "subprocess still running" warnings in the starting process).
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class PocLayout:
    """Where a POC federation's parts are."""

    #: The POC workspace (holds project.yml, the provisioned kits and poc/).
    workspace: Path
    server_kit: Path
    site_kits: Mapping[str, Path]
    admin_kit: Path
    fed_port: int
    admin_port: int

    @property
    def run_dir(self) -> Path:
        return self.workspace / "poc"

    @property
    def fed_address(self) -> str:
        return f"127.0.0.1:{self.fed_port}"

    @property
    def admin_address(self) -> str:
        return f"127.0.0.1:{self.admin_port}"

    def to_json(self) -> dict[str, Any]:
        return {
            "workspace": str(self.workspace),
            "server_kit": str(self.server_kit),
            "site_kits": {k: str(v) for k, v in self.site_kits.items()},
            "admin_kit": str(self.admin_kit),
            "fed_port": self.fed_port,
            "admin_port": self.admin_port,
        }


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now (all bound at once, so the
    OS cannot hand the same one out twice)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def prepare(
    workspace: Path,
    *,
    num_sites: int = 2,
    fed_port: int | None = None,
    admin_port: int | None = None,
    force: bool = False,
) -> PocLayout:
    """Write a local project (server1, site-1..N, admin@nvidia.com) and provision it.

    Ports default to free ones picked now; pass 8002/8003 for NVIDIA FLARE's.
    """
    from shoal.provision import provision

    if not 1 <= num_sites <= 1000:
        raise ConfigError(f"poc prepare: -n must be between 1 and 1000, got {num_sites}")
    workspace = workspace.resolve()
    if (workspace / STATE_FILE).exists():
        if not force:
            raise ConfigError(
                f"{workspace} already holds a POC federation; `shoal poc stop` it and "
                "pass --force to prepare a new one"
            )
        stop(workspace)
    workspace.mkdir(parents=True, exist_ok=True)
    taken = {p for p in (fed_port, admin_port) if p}
    spare = [p for p in free_ports(3 + len(taken)) if p not in taken]
    fed = fed_port or spare.pop()
    adm = admin_port or spare.pop()
    health = spare.pop()
    sites = [f"site-{i}" for i in range(1, num_sites + 1)]
    lines = [
        "# A local proof-of-concept project written by `shoal poc prepare`.",
        "api_version: 3",
        f"name: {PROJECT}",
        "description: shoal POC federation on this machine",
        "participants:",
        "  - name: server1",
        "    type: server",
        "    org: nvidia",
        f"    fed_learn_port: {fed}",
        f"    admin_port: {adm}",
        f"    health_port: {health}",
        "    host_names: [127.0.0.1, localhost]",
    ]
    for s in sites:
        lines += [f"  - name: {s}", "    type: client", "    org: nvidia"]
    lines += [
        "  - name: admin@nvidia.com",
        "    type: admin",
        "    org: nvidia",
        "    role: project_admin",
    ]
    project_file = workspace / "project.yml"
    project_file.write_text("\n".join(lines) + "\n")
    result = provision(project_file, workspace / "kits")
    layout = PocLayout(
        workspace=workspace,
        server_kit=result.kits["server1"],
        site_kits={s: result.kits[s] for s in sites},
        admin_kit=result.kits["admin@nvidia.com"],
        fed_port=fed,
        admin_port=adm,
    )
    tmp = workspace / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(layout.to_json(), indent=2))
    os.replace(tmp, workspace / STATE_FILE)
    return layout


def load_layout(workspace: Path) -> PocLayout:
    path = workspace.resolve() / STATE_FILE
    if not path.exists():
        raise ConfigError(f"{workspace}: no POC federation here; run `shoal poc prepare` first")
    d = json.loads(path.read_text())
    return PocLayout(
        workspace=Path(d["workspace"]),
        server_kit=Path(d["server_kit"]),
        site_kits={k: Path(v) for k, v in d["site_kits"].items()},
        admin_kit=Path(d["admin_kit"]),
        fed_port=int(d["fed_port"]),
        admin_port=int(d["admin_port"]),
    )


def _pid_file(layout: PocLayout, name: str) -> Path:
    return layout.run_dir / "pids" / f"{name}.pid"


def _alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        return finished == 0
    except ChildProcessError:
        return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _private_opener(path: str, flags: int) -> int:
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)  # one made before this rule was 0644
    return fd


def _spawn(
    layout: PocLayout, name: str, args: list[str], env: Mapping[str, str], python: str
) -> int:
    # The daemons' output is as private as the logs they write themselves
    # (they set their own umask; these files are made here, under the caller's).
    layout.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    layout.run_dir.chmod(0o700)
    logs = layout.run_dir / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)
    pid_file = _pid_file(layout, name)
    pid_file.parent.mkdir(mode=0o700, exist_ok=True)
    old = _read_pid(pid_file)
    if old is not None and _alive(old):
        raise ShoalError(f"{name} is already running (pid {old}); `shoal poc stop` first")
    with open(logs / f"{name}.out", "ab", opener=_private_opener) as out:
        proc = subprocess.Popen(
            [python, "-m", "shoal", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            # Own process group: a terminal's Ctrl-C reaches us, and we stop
            # them in order; `stop` can kill each group whole.
            start_new_session=True,
        )
    with open(pid_file, "w", opener=_private_opener) as f:
        f.write(f"{proc.pid}\n")
    _children[proc.pid] = proc
    return proc.pid


def start(
    workspace: Path,
    *,
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
    python: str = sys.executable,
    heartbeat_timeout_s: float | None = None,
) -> PocLayout:
    """Start the server and every site; return once all sites are connected."""
    layout = load_layout(workspace)
    extra = dict(env or {})
    # The examples read MNIST from SHOAL_MNIST_PATH on machines without
    # internet; job code may read only declared data (shoal.sandbox), so the
    # POC's sites declare that file's folder.
    mnist = extra.get("SHOAL_MNIST_PATH") or os.environ.get("SHOAL_MNIST_PATH")
    if mnist:
        declared = extra.get("SHOAL_DATA_PATHS") or os.environ.get("SHOAL_DATA_PATHS", "")
        folder = str(Path(mnist).resolve().parent)
        extra["SHOAL_DATA_PATHS"] = os.pathsep.join(p for p in (declared, folder) if p)
    ready = layout.server_kit / "server_ready.json"
    ready.unlink(missing_ok=True)
    t0 = time.monotonic()
    try:
        server_args = ["server", "--kit", str(layout.server_kit), "--host", "127.0.0.1"]
        if heartbeat_timeout_s is not None:
            server_args += ["--heartbeat-timeout", str(heartbeat_timeout_s)]
        pid = _spawn(layout, "server1", server_args, extra, python)
        _wait(lambda: ready.exists(), timeout, "the server to listen", layout, pid)
        for site, kit in layout.site_kits.items():
            _spawn(
                layout,
                site,
                ["client", "--kit", str(kit), "--server", layout.fed_address],
                extra,
                python,
            )
        with admin_session(workspace, timeout=timeout) as session:

            def all_connected() -> bool:
                up = {site.name for site in session.check_status().connected}
                return set(layout.site_kits) <= up

            _wait(
                all_connected,
                timeout - (time.monotonic() - t0),
                "every site to connect",
                layout,
                pid,
            )
    except BaseException:
        stop(workspace)
        raise
    log.info("POC federation up in %.2f s", time.monotonic() - t0)
    return layout


def _wait(cond: Any, timeout: float, what: str, layout: PocLayout, server_pid: int) -> None:
    deadline = time.monotonic() + max(timeout, 1.0)
    while time.monotonic() < deadline:
        if cond():
            return
        if not _alive(server_pid):
            out = layout.run_dir / "logs" / "server1.out"
            tail = out.read_text(errors="replace").splitlines()[-5:] if out.exists() else []
            raise ShoalError("the server exited during start-up:\n" + "\n".join(tail))
        time.sleep(0.05)
    raise ShoalError(
        f"timed out after {timeout:.0f} s waiting for {what}; see {layout.run_dir / 'logs'}"
    )


def stop(workspace: Path, *, timeout: float = 10.0) -> list[str]:
    """Stop every POC process (sites first, then the server); returns their names."""
    layout = load_layout(workspace)
    pids_dir = layout.run_dir / "pids"
    if not pids_dir.is_dir():
        return []
    entries = sorted(pids_dir.glob("*.pid"), key=lambda p: p.stem == "server1")
    stopped: list[str] = []
    for path in entries:
        pid = _read_pid(path)
        if pid is not None and _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            stopped.append(path.stem)
    deadline = time.monotonic() + timeout
    for path in entries:
        pid = _read_pid(path)
        if pid is None:
            continue
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        # The group also holds job workers a daemon started; none may survive.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        child = _children.pop(pid, None)
        if child is not None:
            child.wait()
        path.unlink(missing_ok=True)
    return stopped


def status(workspace: Path) -> dict[str, Any]:
    layout = load_layout(workspace)
    procs = {}
    for name in ["server1", *layout.site_kits]:
        pid = _read_pid(_pid_file(layout, name))
        procs[name] = {"pid": pid, "running": bool(pid and _alive(pid))}
    return {"layout": layout.to_json(), "processes": procs}


def admin_session(workspace: Path, *, timeout: float = 30.0) -> AdminSession:
    from shoal.admin.session import AdminSession

    layout = load_layout(workspace)
    return AdminSession.from_kit(
        layout.admin_kit, server_address=layout.admin_address, timeout=timeout
    )
