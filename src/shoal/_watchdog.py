"""Child processes end with their parent.

A job worker or workflow process whose daemon died (SIGKILL, OOM) must not
live on: it would hold a GPU, keep calling the server, or — after a server
restart — run a second copy of the same workflow. A daemon thread watches the
parent pid and exits the process when the parent is gone.
"""

from __future__ import annotations

import logging
import os
import threading
import time

__all__ = ["exit_with_parent"]

log = logging.getLogger(__name__)

_started = False


def exit_with_parent(parent_pid: int | None = None, *, interval_s: float = 0.5) -> None:
    """Exit (code 70) as soon as ``parent_pid`` (default: our parent) is gone."""
    global _started
    if _started:
        return
    _started = True
    expected = parent_pid if parent_pid is not None else os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != expected:
                log.error("parent process %d is gone; exiting", expected)
                os._exit(70)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
