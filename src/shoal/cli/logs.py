"""Log set-up for the daemons (entry points install handlers, libraries don't)."""

from __future__ import annotations

import logging
from pathlib import Path

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
