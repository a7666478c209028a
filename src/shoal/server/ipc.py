"""The local channel between the server daemon and a job's workflow process.

Small JSON messages, one per line, over a socketpair the daemon creates and
passes to the child by file descriptor. Weights cross it only when they are
small (a result of at most IPC_INLINE_MAX bytes, base64 in the message);
larger ones stay in files of the job's run folder, which messages name.
Nothing is pickled.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from typing import Any

__all__ = ["EXIT_SUSPENDED", "IPC_INLINE_MAX", "IpcChannel"]

#: Largest result handed to the workflow inside its message (base64).
IPC_INLINE_MAX = 64 * 1024

#: The workflow process's exit code when it stopped at a round boundary,
#: the round checkpointed, because the daemon asked it to (op "drain"):
#: the job is not over and resumes when the server starts again.
EXIT_SUSPENDED = 77

#: A message larger than this is a bug or an attack; refuse it.
MAX_LINE = 4 * 1024 * 1024


class IpcChannel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()
        self._buf = b""

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        with self._send_lock:
            self.sock.sendall(data)

    def recv(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next message; None on timeout (0: none waiting). Raises
        EOFError when closed."""
        while b"\n" not in self._buf:
            self.sock.settimeout(timeout)
            try:
                chunk = self.sock.recv(65536)
            except (TimeoutError, BlockingIOError):
                return None
            if not chunk:
                raise EOFError("IPC channel closed")
            self._buf += chunk
            if len(self._buf) > MAX_LINE:
                raise EOFError("IPC message too large")
        line, self._buf = self._buf.split(b"\n", 1)
        message = json.loads(line)
        if not isinstance(message, dict):
            raise EOFError("IPC message is not an object")
        return message

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
