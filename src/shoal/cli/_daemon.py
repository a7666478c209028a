"""What `shoal server` and `shoal client` share: log set-up and the signal loop.

Entry points install log handlers; libraries don't."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
from pathlib import Path
from types import FrameType
from typing import Protocol

from shoal._memory import tune_allocator

FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


#: What a daemon creates is its own: jobs (code, data, models), the job store,
#: logs. Files 0600, folders 0700 whatever the umask of the shell that started it.
PRIVATE_UMASK = 0o077


def private_files() -> None:
    """Make everything this process (and its job processes) creates private to its user.

    Called first by ``shoal server`` and ``shoal client``: a normal umask (022)
    would leave job folders, the job store and logs readable by every local user.
    """
    os.umask(PRIVATE_UMASK)


def install_file_log(path: Path) -> None:
    """Log to ``path`` (appending, the file 0600) as well as to the console."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Explicit, not only the umask: a log from before this rule was 0644.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    with contextlib.suppress(OSError):  # not ours to change (e.g. another user's file)
        os.chmod(path, 0o600)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    # gRPC's own loggers are chatty at INFO about retries we handle ourselves.
    logging.getLogger("grpc").setLevel(logging.WARNING)


def add_metrics_args(p: argparse.ArgumentParser) -> None:
    """``--metrics-port`` and ``--metrics-host``: the Prometheus endpoint, off by default."""
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (default: off; 0 = any "
        "free port); see docs/observability.md",
    )
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address the metrics endpoint binds (default 127.0.0.1; 0.0.0.0 lets other "
        "hosts, such as a pod's Prometheus, scrape it: plain HTTP, no authentication)",
    )


class _Daemon(Protocol):
    exit_code: int

    def __enter__(self) -> object: ...
    def __exit__(self, *exc: object) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...
    def request_stop(self, *, restart: bool = False) -> None: ...


def serve(daemon: _Daemon) -> int:
    """Run ``daemon`` until SIGTERM/SIGINT or its own stop; return its exit code."""
    tune_allocator()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("received %s", signal.Signals(signum).name)
        daemon.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with daemon:
        daemon.wait()
    return daemon.exit_code
