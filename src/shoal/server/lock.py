"""One server daemon per job store: an exclusive ``flock`` on a lock file.

Two daemons on one store would both schedule its jobs and both write its
SQLite database. The Kubernetes Deployment never runs two (one replica,
strategy Recreate), and this lock makes a second daemon on the same volume
fail at start, naming the holder, whoever started it.

    lock = ServerLock.acquire(Path("/var/lib/shoal/server.lock"))
    ...
    lock.release()

The lock belongs on a local or block volume: ``flock`` on a FUSE bucket
mount is only seen by processes on the same node. The kernel drops it when
the process dies, so a crashed daemon never leaves a stale lock behind; the
file's contents (who holds it) are only for the error message.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from shoal.errors import ConfigError

__all__ = ["LOCK_FILE", "ServerLock", "StoreLockedError"]

#: Name of the lock file in the server's state folder.
LOCK_FILE = "server.lock"


class StoreLockedError(ConfigError):
    """Another server daemon holds the lock on this job store."""


class ServerLock:
    """A held lock; :meth:`release` (or process exit) gives it up."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: Path) -> ServerLock:
        """Lock ``path`` (created 0600) or raise StoreLockedError naming the holder."""
        path = Path(path)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StoreLockedError(
                f"{path}: another shoal server holds this job store ({holder}); "
                "two servers on one store would both run its jobs. Stop the other one "
                "(on Kubernetes: one replica, strategy Recreate), or give this one its "
                "own --state-dir and --workspace"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": int(time.time())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode() + b"\n", 0)
        return cls(path, fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the only descriptor drops the flock


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(info["since"])))
        return f"pid {int(info['pid'])} on host {info['host']!s}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
