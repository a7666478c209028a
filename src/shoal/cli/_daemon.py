"""What `shoal server` and `shoal client` share: log set-up and the signal loop.

Entry points install log handlers; libraries don't."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType
from typing import Protocol

from shoal._memory import tune_allocator

FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


def install_file_log(path: Path) -> None:
    """Log to ``path`` (appending) as well as to the console."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    # gRPC's own loggers are chatty at INFO about retries we handle ourselves.
    logging.getLogger("grpc").setLevel(logging.WARNING)


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
