"""``--processes`` mode: sites hosted by a pool of spawned worker processes.

Heavy frameworks (TensorFlow) keep global state and hold the GIL longer than
numpy, so many sites in one process scale poorly. A worker process hosts a
share of the sites (as threads, like the threads mode, with one site active
at a time by default) and talks to the simulator over a pipe in JSON: no
pickled objects cross it, and weights move as files.

    host = WorkerHost(index=0, config=..., on_message=comm.on_message)
    host.start(); host.deliver("site-1", task); ...; host.stop()
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

__all__ = ["WorkerHost", "worker_main"]

logger = logging.getLogger(__name__)


def _send(conn: Connection, lock: threading.Lock, message: Mapping[str, Any]) -> None:
    data = json.dumps(message).encode()
    with lock:
        conn.send_bytes(data)


class WorkerHost:
    """The simulator's side of one worker process."""

    def __init__(
        self,
        *,
        index: int,
        config: Mapping[str, Any],
        on_message: Callable[[Mapping[str, Any]], None],
    ) -> None:
        self.index = index
        self.sites: list[str] = [name for name, _ in config["sites"]]
        self._config = dict(config)
        self._on_message = on_message
        self._lock = threading.Lock()
        self._exited: set[str] = set()
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=worker_main,
            args=(child, json.dumps(self._config)),
            name=f"shoal-sim-worker-{index}",
            daemon=True,
        )
        self._child = child
        self._reader = threading.Thread(
            target=self._read, name=f"sim-worker-{index}-reader", daemon=True
        )

    def start(self) -> None:
        self._process.start()
        self._child.close()
        self._reader.start()

    def deliver(self, site: str, message: Mapping[str, Any] | None) -> None:
        payload = (
            {"type": "finish", "site": site} if message is None else {"type": "task", **message}
        )
        try:
            _send(self._conn, self._lock, payload)
        except OSError:
            logger.debug("worker %d is gone; %s not delivered", self.index, site)

    def join(self, timeout: float | None) -> bool:
        """Wait for the worker to exit; False if it is still running."""
        self._process.join(timeout)
        self._reader.join(5)
        return not self._process.is_alive()

    def kill(self) -> None:
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)

    def _read(self) -> None:
        while True:
            try:
                message = json.loads(self._conn.recv_bytes())
            except (EOFError, OSError):
                break
            if message.get("type") == "exit":
                self._exited.add(str(message["site"]))
            self._on_message(message)
        self._process.join(10)
        code = self._process.exitcode
        for site in self.sites:
            if site not in self._exited:
                self._on_message(
                    {
                        "type": "exit",
                        "site": site,
                        "error": f"its worker process {self.index} died (exit code {code})",
                    }
                )


def worker_main(conn: Connection, config_json: str) -> None:
    """Entry point of a worker process (spawned; takes only a pipe and JSON)."""
    from shoal.sim.logs import SiteLogRouter
    from shoal.sim.site import SiteInfo, SiteRuntime

    config = json.loads(config_json)
    os.environ.update(config["env"])
    sys.argv = list(config["argv"])
    for path in reversed(config["sys_path"]):
        sys.path.insert(0, path)
    logging.basicConfig(
        level=config["log_level"],
        format="%(asctime)s - %(name)s - %(levelname)s - %(message)s",
    )
    lock = threading.Lock()
    sites = [SiteInfo(name=name, index=index) for name, index in config["sites"]]
    left = {s.name for s in sites}
    all_done = threading.Event()

    def emit(message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            _send(conn, lock, message)
        if message.get("type") == "exit":
            left.discard(str(message["site"]))
            if not left:
                all_done.set()

    with SiteLogRouter(
        Path(config["log_dir"]),
        [s.name for s in sites],
        per_site_logs=config["per_site_logs"],
        server_log=None,
        level=config["log_level"],
    ):
        runtime = SiteRuntime(
            script=Path(config["script"]),
            sites=sites,
            num_sites=config["num_sites"],
            job_id=config["job_id"],
            results_dir=Path(config["results_dir"]),
            emit=emit,
            max_active=config["max_active"],
            stack_size=config["stack_size"],
            filters=config.get("filters") or {},
            app_dir=Path(config["app_dir"]) if config.get("app_dir") else None,
            state_root=Path(config["state_root"]) if config.get("state_root") else None,
            tracking=config.get("tracking") or {},
        )
        runtime.start()

        def read() -> None:
            while True:
                try:
                    message = json.loads(conn.recv_bytes())
                except (EOFError, OSError):
                    # The simulator is gone: end every site.
                    for site in runtime.backends:
                        runtime.deliver(site, None)
                    return
                site = str(message["site"])
                if message["type"] == "finish":
                    runtime.deliver(site, None)
                else:
                    runtime.deliver(site, message)

        threading.Thread(target=read, name="sim-worker-reader", daemon=True).start()
        all_done.wait()
        runtime.join(5)
    conn.close()
