"""Run the dashboard: in the foreground (``shoal dashboard``) or in a thread (the demo).

    with start_dashboard(DashboardConfig(kit=Path("prod_00/admin@nvidia.com"))) as dash:
        print(dash.url)          # http://127.0.0.1:8765/?token=...
        ...                      # serves until the block ends

The dashboard dials the server with the kit's admin certificate (the admin
API, nothing else) and listens on loopback only unless ``allow_remote``.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import uvicorn

from shoal.admin.session import AdminSession
from shoal.errors import ConfigError, ShoalError
from shoal.observe.metrics import is_loopback
from shoal.web.app import create_app
from shoal.web.security import Guard

__all__ = ["DEFAULT_PORT", "DashboardConfig", "RunningDashboard", "start_dashboard"]

#: The port ``shoal dashboard`` listens on unless told otherwise.
DEFAULT_PORT = 8765
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True, kw_only=True)
class DashboardConfig:
    """How to run a dashboard."""

    kit: Path
    """The admin's startup kit: their certificate, their role, their server."""
    host: str = LOOPBACK
    """Address to listen on; anything but loopback needs ``allow_remote``."""
    port: int = DEFAULT_PORT
    """Port to listen on; 0 picks a free one."""
    allow_remote: bool = False
    """Allow ``host`` beyond loopback (anyone who gets the URL acts as this admin)."""
    server_address: str | None = None
    """Dial this ``host:port`` instead of the kit's server address."""
    login_token: str | None = None
    """The token in the printed URL; a random one when not given."""
    timeout: float = 30.0
    """Seconds each admin call may take."""


def check_bind(config: DashboardConfig) -> str | None:
    """A warning when the dashboard will listen beyond loopback; ConfigError
    when it would without ``allow_remote``."""
    if is_loopback(config.host):
        return None
    if not config.allow_remote:
        raise ConfigError(
            f"--host {config.host} listens beyond this machine: anyone who reaches it with "
            "the printed URL acts as this admin. Pass --allow-remote to do it anyway."
        )
    return (
        f"WARNING: the dashboard listens on {config.host}:{config.port}, beyond this machine. "
        "Anyone who gets the printed URL acts as this admin; the connection is plain HTTP. "
        "Prefer an SSH tunnel to 127.0.0.1."
    )


def _allowed_hosts(host: str) -> list[str]:
    # Loopback: only the names of this machine, so a DNS-rebound name is refused.
    return ["127.0.0.1", "localhost", "[::1]"] if is_loopback(host) else ["*"]


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class RunningDashboard:
    """A dashboard serving in a background thread; a context manager."""

    def __init__(self, config: DashboardConfig, *, sock: socket.socket | None = None) -> None:
        self.config = config
        self.warning = check_bind(config)
        self.session = AdminSession.from_kit(
            config.kit, server_address=config.server_address, timeout=config.timeout
        )
        try:
            self._sock = sock or _bind(config.host, config.port)
        except BaseException:
            self.session.close()
            raise
        self.port = int(self._sock.getsockname()[1])
        self.guard = Guard(login_token=config.login_token)
        app = create_app(
            self.session,
            guard=self.guard,
            allowed_hosts=_allowed_hosts(config.host),
            transfer=self.session.kit.root / "transfer",
        )
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_config=None,
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=2,
            )
        )
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The address to open, with the login token."""
        host = self.config.host if is_loopback(self.config.host) else socket.gethostname()
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/?token={self.guard.login_token}"

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (Ctrl-C)."""
        try:
            self.server.run(sockets=[self._sock])
        finally:
            self._close_resources()

    def start(self) -> RunningDashboard:
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise ShoalError("the dashboard did not start (see the log above)")
            time.sleep(0.02)
        return self

    def close(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._close_resources()

    def _close_resources(self) -> None:
        self._sock.close()
        self.session.close()

    def __enter__(self) -> RunningDashboard:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def start_dashboard(config: DashboardConfig) -> RunningDashboard:
    """A dashboard serving in a background thread (stop it with ``close()``)."""
    return RunningDashboard(config).start()
