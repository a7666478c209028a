"""Connected sites: one session per site identity, heartbeats, push queues.

A site's identity is its certificate's CN. A new Connect from a name that
already has a session replaces the old one (the old stream is closed): after
a site restart or a network change the stale session is never left holding
the name.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SiteRegistry", "SiteSession"]

log = logging.getLogger(__name__)

#: Sentinel pushed into a session's queue to end its stream.
CLOSE = object()


@dataclass
class SiteSession:
    name: str
    org: str
    peer: str
    #: Serial of the certificate the session was opened with (for revocation).
    serial: int = 0
    session_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    connected_at: float = field(default_factory=time.time)
    last_heartbeat: float = field(default_factory=time.monotonic)
    running_jobs: list[str] = field(default_factory=list)
    resources: dict[str, Any] = field(default_factory=dict)
    #: The site's shoal version, as its Connect said.
    shoal_version: str = ""
    #: When the site's certificate expires (ISO 8601, UTC), if known.
    cert_not_after: str | None = None
    events: queue.Queue[Any] = field(default_factory=queue.Queue)
    active: bool = True
    #: Called after every push, from the pushing thread; it must not block.
    #: The Connect call holding this session's stream (a coroutine on the
    #: Fleet server's loop) sets it to learn there is something to send,
    #: instead of polling ``events``.
    on_event: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def push(self, event: Any) -> None:
        self.events.put(event)
        self._notify()

    def close(self) -> None:
        self.active = False
        self.events.put(CLOSE)
        self._notify()

    def _notify(self) -> None:
        listener = self.on_event
        if listener is not None:
            listener()


class SiteRegistry:
    """Thread-safe map of site name → live session."""

    def __init__(self, *, heartbeat_timeout_s: float) -> None:
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._lock = threading.Lock()
        #: Held from a change to its listeners' call: an expiry (a thread of
        #: its own) and a reconnection (the Fleet loop) are heard in the order
        #: they happened, never "connected" then "lost" for a site that is here.
        self._order = threading.Lock()
        self._sessions: dict[str, SiteSession] = {}
        self._listeners: list[Callable[[str, bool], None]] = []
        # Each site's published policy summary (``shoal.client.policy``),
        # kept after its session ends: a site offline for a while still
        # refuses what its policy refuses. Lost on a server restart until
        # the site connects again.
        self._policies: dict[str, dict[str, Any]] = {}

    def on_change(self, listener: Callable[[str, bool], None]) -> None:
        """``listener(site, connected)`` is called on connect and on loss."""
        self._listeners.append(listener)

    def open(self, session: SiteSession) -> None:
        with self._order:
            with self._lock:
                old = self._sessions.get(session.name)
                self._sessions[session.name] = session
            if old is not None:
                log.info(
                    "site %s reconnected from %s: replacing its previous session %s",
                    session.name,
                    session.peer,
                    old.session_id[:8],
                )
                old.close()
            self._notify(session.name, True)

    def end(self, session: SiteSession, reason: str, *, silent_since: float | None = None) -> bool:
        """End ``session`` if it is still the current one for its name and, with
        ``silent_since`` (a monotonic time), only if no heartbeat came after it.
        True when it was ended here."""
        with self._order:
            with self._lock:
                current = self._sessions.get(session.name)
                if current is not session:
                    return False
                if silent_since is not None and session.last_heartbeat > silent_since:
                    return False  # a beat landed after the expiry check: still alive
                del self._sessions[session.name]
            session.close()
            log.info("site %s disconnected (%s)", session.name, reason)
            self._notify(session.name, False)
        return True

    def beat(self, name: str, session_id: str, running_jobs: list[str]) -> bool:
        with self._lock:
            s = self._sessions.get(name)
            if s is None or s.session_id != session_id:
                return False
            s.last_heartbeat = time.monotonic()
            s.running_jobs = list(running_jobs)
            return True

    def set_policy(self, name: str, summary: Any) -> None:
        """Keep the policy summary ``name`` published (None or not a mapping:
        a site that publishes none, which refuses nothing at submit)."""
        with self._lock:
            if isinstance(summary, dict):
                changed = self._policies.get(name, {}).get("sha256") != summary.get("sha256")
                self._policies[name] = summary
            else:
                changed = self._policies.pop(name, None) is not None
        if changed:
            log.info("site %s published its policy: %s", name, summary)

    def policies(self) -> dict[str, dict[str, Any]]:
        """Each site's last published policy summary, by site name."""
        with self._lock:
            return dict(self._policies)

    def get(self, name: str) -> SiteSession | None:
        with self._lock:
            return self._sessions.get(name)

    def connected(self) -> list[str]:
        with self._lock:
            return sorted(self._sessions)

    def sessions(self) -> list[SiteSession]:
        with self._lock:
            return sorted(self._sessions.values(), key=lambda s: s.name)

    def expire(self) -> list[str]:
        """End sessions silent for longer than the heartbeat timeout."""
        with self._lock:
            now = time.monotonic()
            cutoff = now - self.heartbeat_timeout_s
            stale = [
                (s, s.last_heartbeat) for s in self._sessions.values() if s.last_heartbeat < cutoff
            ]
        # A heartbeat can land between the check and the end: the end is then
        # skipped (checked again under the lock), not logged with a negative age.
        return [
            s.name
            for s, last in stale
            if self.end(s, f"no heartbeat for {now - last:.1f} s", silent_since=last)
        ]

    def end_revoked(self, serials: frozenset[int]) -> None:
        """End the sessions whose certificate is among ``serials`` (a new CRL)."""
        for session in self.sessions():
            if session.serial in serials:
                self.end(session, "certificate revoked")

    def broadcast(self, event: Any) -> None:
        for s in self.sessions():
            s.push(event)

    def _notify(self, name: str, connected: bool) -> None:
        for listener in self._listeners:
            try:
                listener(name, connected)
            except Exception:  # a listener bug must not break session handling
                log.exception("site listener failed")
