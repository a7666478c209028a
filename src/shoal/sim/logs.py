"""Where a simulated site's output goes.

Sites that run as threads share one process: one ``sys.stdout`` and one root
logger. While a simulation runs, ``sys.stdout``/``sys.stderr`` are replaced by
proxies and a logging handler is added; both look at a context variable set
in each site's thread and send the site's lines to its log files instead of
the console:

* ``logs/sites.log``: every site's lines, each prefixed with the site name;
* ``logs/site-N.log``: one file per site, only for small simulations
  (``per_site_logs``), so that ``-n 1000`` does not write 1,000 files.

Lines from anything else (the workflow, the simulator) go to
``logs/server.log`` and, as before, to the console.
"""

from __future__ import annotations

import contextvars
import io
import logging
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

__all__ = ["SiteLogRouter", "current_site", "site_context"]

#: The site whose code the current thread runs, if any.
current_site: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "shoal_sim_site", default=None
)

_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


def site_context(site: str) -> contextvars.Token[str | None]:
    """Mark the current thread as running ``site``'s code."""
    return current_site.set(site)


class _SiteStream(io.TextIOBase):
    """A stand-in for sys.stdout/sys.stderr that routes a site thread's writes."""

    def __init__(self, router: SiteLogRouter, original: IO[str]) -> None:
        self._router = router
        self._original = original

    def write(self, text: str) -> int:
        site = current_site.get()
        if site is None:
            return self._original.write(text)
        self._router.write(site, text)
        return len(text)

    def flush(self) -> None:
        if current_site.get() is None:
            self._original.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._original, "encoding", "utf-8")

    def fileno(self) -> int:
        return self._original.fileno()


class _DropSiteRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return current_site.get() is None


class _RouterHandler(logging.Handler):
    def __init__(self, router: SiteLogRouter, server_log: IO[str] | None) -> None:
        super().__init__(logging.DEBUG)
        self._router = router
        self._server_log = server_log
        self.setFormatter(logging.Formatter(_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            site = current_site.get()
            if site is not None:
                self._router.write(site, line + "\n")
            elif self._server_log is not None:
                with self._router.lock:
                    self._server_log.write(line + "\n")
                    self._server_log.flush()
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


class SiteLogRouter:
    """Routes site threads' output to files for the lifetime of a ``with`` block.

    ``server_log`` receives every non-site log record; ``None`` leaves those to
    the handlers already installed (a worker process has no server log).
    """

    def __init__(
        self,
        log_dir: Path,
        sites: Iterable[str],
        *,
        per_site_logs: bool,
        server_log: Path | None,
        level: int = logging.INFO,
    ) -> None:
        self.lock = threading.Lock()
        self._log_dir = log_dir
        self._sites = list(sites)
        self._per_site = per_site_logs
        self._server_log_path = server_log
        self._level = level
        self._files: dict[str, IO[str]] = {}
        self._partial: dict[str, str] = {}
        self._combined: IO[str] | None = None
        self._server_log: IO[str] | None = None
        self._saved: list[Any] = []

    def __enter__(self) -> SiteLogRouter:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        # Line-buffered appends: worker processes share sites.log, and one
        # write per line keeps their lines whole.
        self._combined = open(self._log_dir / "sites.log", "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        if self._per_site:
            for site in self._sites:
                self._files[site] = open(  # noqa: SIM115
                    self._log_dir / f"{site}.log", "a", buffering=1, encoding="utf-8"
                )
        if self._server_log_path is not None:
            self._server_log = open(self._server_log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        root = logging.getLogger()
        drop = _DropSiteRecords()
        handler = _RouterHandler(self, self._server_log)
        self._saved = [sys.stdout, sys.stderr, root.level, drop, handler, list(root.handlers)]
        for existing in root.handlers:
            existing.addFilter(drop)
        root.addHandler(handler)
        if root.level > self._level or root.level == logging.NOTSET:
            root.setLevel(self._level)
        sys.stdout = _SiteStream(self, sys.stdout)
        sys.stderr = _SiteStream(self, sys.stderr)
        return self

    def __exit__(self, *exc: object) -> None:
        stdout, stderr, level, drop, handler, handlers = self._saved
        sys.stdout, sys.stderr = stdout, stderr
        root = logging.getLogger()
        root.removeHandler(handler)
        root.setLevel(level)
        for existing in handlers:
            existing.removeFilter(drop)
        with self.lock:
            for site, rest in self._partial.items():
                if rest:
                    self._write_line(site, rest)
            self._partial.clear()
            for f in [*self._files.values(), self._combined, self._server_log]:
                if f is not None:
                    f.close()
            self._files.clear()

    def _write_line(self, site: str, line: str) -> None:
        if self._combined is not None:
            self._combined.write(f"{site}: {line}\n")
        f = self._files.get(site)
        if f is not None:
            f.write(line + "\n")

    def write(self, site: str, text: str) -> None:
        """Append ``text`` (any fragment of output) to ``site``'s logs, whole lines at a time."""
        with self.lock:
            buffered = self._partial.get(site, "") + text
            *lines, rest = buffered.split("\n")
            for line in lines:
                self._write_line(site, line)
            if rest:
                self._partial[site] = rest
            else:
                self._partial.pop(site, None)
