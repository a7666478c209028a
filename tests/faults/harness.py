"""Real federations for fault and hostile-input tests.

Unlike the POC fixtures these start each process by hand, so a test can put
the server on a tmpfs workspace, listen on a veth address, run a site inside
a network namespace, SIGKILL any of them and start it again on the same
ports. Every process is a real daemon from a real startup kit (mutual TLS).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shoal.admin.session import AdminSession
from shoal.poc import free_ports
from shoal.provision import provision

PROJECT = "fault_project"


def wait_for(cond: Callable[[], Any], timeout: float, what: str, *, poll: float = 0.2) -> Any:
    """Poll ``cond`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


class Fed:
    """A provisioned project plus the processes a test started from its kits."""

    def __init__(
        self,
        root: Path,
        *,
        sites: Sequence[str] = ("site-1", "site-2"),
        admins: Sequence[tuple[str, str, str]] = (("admin@nvidia.com", "nvidia", "project_admin"),),
    ) -> None:
        self.root = root
        self.fed_port, self.admin_port, health_port = free_ports(3)
        lines = [
            "api_version: 3",
            f"name: {PROJECT}",
            "participants:",
            "  - name: server1",
            "    type: server",
            "    org: nvidia",
            f"    fed_learn_port: {self.fed_port}",
            f"    admin_port: {self.admin_port}",
            f"    health_port: {health_port}",
            "    host_names: [127.0.0.1, localhost]",
        ]
        for s in sites:
            lines += [f"  - name: {s}", "    type: client", "    org: nvidia"]
        for name, org, role in admins:
            lines += [
                f"  - name: {name}",
                "    type: admin",
                f"    org: {org}",
                f"    role: {role}",
            ]
        self.project_file = root / "project.yml"
        root.mkdir(parents=True, exist_ok=True)
        self.project_file.write_text("\n".join(lines) + "\n")
        self.kits_root = root / "kits"
        self.kits = dict(provision(self.project_file, self.kits_root).kits)
        self.state_dir = self.kits_root / PROJECT / "state"
        self.server_kit = self.kits["server1"]
        self.workspace = self.server_kit
        self.logs = root / "logs"
        self.logs.mkdir(exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._sessions: list[AdminSession] = []
        # The gate is how tests hold and watch job code: the daemons hand
        # its variable to jobs and let them write there (shoal.sandbox).
        self.env = {
            "FAULT_GATE": str(root / "gate"),
            "SHOAL_JOB_ENV": "FAULT_GATE",
            "SHOAL_WRITE_PATHS": str(root / "gate"),
        }
        (root / "gate").mkdir(exist_ok=True)

    @property
    def gate(self) -> Path:
        return self.root / "gate"

    # -- processes ------------------------------------------------------------

    def _spawn(self, name: str, args: list[str], prefix: Sequence[str] = ()) -> int:
        old = self.procs.get(name)
        if old is not None and old.poll() is None:
            raise AssertionError(f"{name} is still running")
        with open(self.logs / f"{name}.out", "ab") as out:
            proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "shoal", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc.pid

    def start_server(
        self,
        *,
        host: str = "127.0.0.1",
        workspace: Path | None = None,
        heartbeat_s: float = 6.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        if workspace is not None:
            self.workspace = workspace
        ready = self.workspace / "server_ready.json"
        ready.unlink(missing_ok=True)
        args = ["server", "--kit", str(self.server_kit), "--host", host, "--health-port", "-1"]
        args += ["--heartbeat-timeout", str(heartbeat_s)]
        if workspace is not None:
            args += ["--workspace", str(workspace)]
        self._spawn("server1", [*args, *extra_args])
        proc = self.procs["server1"]
        wait_for(lambda: ready.exists() or proc.poll() is not None, 60, "the server to listen")
        assert proc.poll() is None, f"server exited: {self.tail('server1')}"

    def start_site(
        self,
        site: str,
        *,
        server: str | None = None,
        netns: str | None = None,
        workspace: Path | None = None,
    ) -> None:
        prefix = ["ip", "netns", "exec", netns] if netns else []
        address = server or f"127.0.0.1:{self.fed_port}"
        args = ["client", "--kit", str(self.kits[site]), "--server", address]
        if workspace is not None:
            args += ["--workspace", str(workspace)]
        self._spawn(site, args, prefix)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal the process's whole group (the daemon and the workers it started)."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def close(self) -> None:
        for s in self._sessions:
            with contextlib.suppress(Exception):
                s.close()
        names = sorted(self.procs, key=lambda n: n == "server1")  # sites first
        for name in names:
            proc = self.procs[name]
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM if proc.poll() is None else signal.SIGKILL)
        for name in names:
            proc = self.procs[name]
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    def tail(self, name: str, n: int = 30) -> str:
        path = self.logs / f"{name}.out"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return "\n".join(lines[-n:])

    # -- admin ----------------------------------------------------------------

    def admin(self, name: str = "admin@nvidia.com", timeout: float = 30.0) -> AdminSession:
        s = AdminSession.from_kit(
            self.kits[name], server_address=f"127.0.0.1:{self.admin_port}", timeout=timeout
        )
        self._sessions.append(s)
        return s

    def wait_connected(
        self, admin: AdminSession, sites: Sequence[str], timeout: float = 60
    ) -> None:
        def up() -> bool:
            st = admin.check_status()
            return set(sites) <= {s["name"] for s in st["sites"] if s["connected"]}

        wait_for(up, timeout, f"{', '.join(sites)} to connect")

    def start_all(
        self, sites: Sequence[str] = ("site-1", "site-2"), **server_kw: Any
    ) -> AdminSession:
        """Server and ``sites`` started, all connected; an admin session to it."""
        self.start_server(**server_kw)
        for site in sites:
            self.start_site(site)
        admin = self.admin()
        self.wait_connected(admin, list(sites))
        return admin

    def restart_and_finish(self, job_id: str, sites: Sequence[str] = ("site-1", "site-2")) -> str:
        """Start the server again (the sites find it by themselves), wait
        for ``job_id`` to complete; the job's server log."""
        self.start_server(heartbeat_s=6)
        admin = self.admin()
        self.wait_connected(admin, list(sites), timeout=120)
        meta = admin.wait_for_job(job_id, timeout=300)
        assert meta["status"] == "FINISHED:COMPLETED", meta
        return (self.workspace / "jobs" / job_id / "logs" / "server.log").read_text()

    # -- a job's files on the server -----------------------------------------

    def run_dir(self, job_id: str) -> Path:
        return self.workspace / "jobs" / job_id / "run"

    def metrics(self, job_id: str) -> list[dict[str, Any]]:
        path = self.run_dir(job_id) / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def round_done(self, job_id: str, k: int) -> dict[str, Any] | None:
        return next((m for m in self.metrics(job_id) if m["round"] == k), None)


# -- a deterministic numpy job --------------------------------------------------

MODEL_PY = '''
"""A deterministic model: every site's update is a fixed function of the global
model, its index and the round, so a run's final weights are known in advance."""
import os
import time
from pathlib import Path

import numpy as np

SIZE = {size}


def initial_weights():
    return {{"w": np.zeros(SIZE, dtype=np.float32), "b": np.zeros(3, dtype=np.float64)}}


def local_update(params, index, round):
    w = np.asarray(params["w"], dtype=np.float32)
    b = np.asarray(params["b"], dtype=np.float64)
    ramp = np.linspace(0.0, 1.0, SIZE, dtype=np.float32)
    return {{
        "w": (0.5 * w + (index + 1) * ramp + np.float32(0.01 * round)).astype(np.float32),
        "b": b + (index + 1) * round,
    }}


def num_examples(index):
    return 10 * (index + 1)


def evaluate(params, round):
    # Test hook: the server's workflow holds here while GATE/hold exists.
    gate = os.environ.get("FAULT_GATE")
    if gate:
        Path(gate, f"server.r{{round}}.aggregated").touch()
        deadline = time.monotonic() + 300
        while Path(gate, "hold").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        Path(gate, f"server.r{{round}}.evaluated").touch()
    return {{"w0": float(np.asarray(params["w"])[-1]), "b0": float(np.asarray(params["b"])[0])}}
'''

TRAIN_PY = """
import json
import os
import time
from pathlib import Path

from model import local_update, num_examples

import shoal.client as fl


def mark(name):
    gate = os.environ.get("FAULT_GATE")
    if gate:
        Path(gate, name).touch()


def main():
    fl.init()
    index = fl.system_info()["site_index"]
    site = fl.system_info()["site_name"]
    gate = os.environ.get("FAULT_GATE")
    cfg_path = Path(gate, "config.json") if gate else None
    while fl.is_running():
        task = fl.receive()
        if task is None:
            break
        k = task.current_round
        mark(f"{{site}}.r{{k}}.start")
        cfg = json.loads(cfg_path.read_text()) if cfg_path and cfg_path.exists() else {{}}
        time.sleep(float(cfg.get("sleep", {{}}).get(site, 0)))
        params = local_update(task.params, index, k)
        mark(f"{{site}}.r{{k}}.send")
        fl.send(fl.FLModel(params=params, metrics={{"index": index}}, num_examples=num_examples(index)))
        mark(f"{{site}}.r{{k}}.sent")


if __name__ == "__main__":
    main()
"""


def write_job(
    folder: Path,
    *,
    name: str = "fault-numpy",
    size: int = 1000,
    num_rounds: int = 3,
    min_clients: int = 1,
    round_timeout_s: float = 120,
    sites: Sequence[str] | None = None,
    start_timeout_s: float | None = None,
    rejoin_grace_s: float | None = None,
) -> Path:
    """A numpy FedAvg job whose model has ``size`` float32 weights (+3 float64)."""
    app = folder / "app"
    app.mkdir(parents=True, exist_ok=True)
    (app / "model.py").write_text(MODEL_PY.format(size=size))
    (app / "train.py").write_text(TRAIN_PY.format())
    yml = [
        f"name: {name}",
        f"min_clients: {min_clients}",
        "workflow:",
        "  name: fedavg",
        f"  num_rounds: {num_rounds}",
        f"  round_timeout_s: {round_timeout_s}",
        "client:",
        "  script: train.py",
        "server:",
        '  initial_weights: "model:initial_weights"',
        '  evaluate: "model:evaluate"',
    ]
    if sites:
        yml.append(f"sites: [{', '.join(sites)}]")
    if start_timeout_s is not None:
        yml.append(f"start_timeout_s: {start_timeout_s}")
    if rejoin_grace_s is not None:
        yml.append(f"rejoin_grace_s: {rejoin_grace_s}")
    (folder / "job.yml").write_text("\n".join(yml) + "\n")
    return folder


def expected_final(folder: Path, num_rounds: int, num_sites: int) -> dict[str, np.ndarray]:
    """What an uninterrupted FedAvg run of ``write_job``'s job ends with."""
    ns: dict[str, Any] = {}
    exec(compile((folder / "app" / "model.py").read_text(), "model.py", "exec"), ns)  # noqa: S102
    params = ns["initial_weights"]()
    for k in range(1, num_rounds + 1):
        updates = [ns["local_update"](params, i, k) for i in range(num_sites)]
        weights = [ns["num_examples"](i) for i in range(num_sites)]
        total = float(sum(weights))
        params = {
            key: (
                sum(u[key].astype(np.float64) * n for u, n in zip(updates, weights, strict=True))
                / total
            ).astype(params[key].dtype)
            for key in params
        }
    return params


def job_yml_text(**kw: Any) -> str:
    return textwrap.dedent("\n".join(f"{k}: {v}" for k, v in kw.items()))
