"""Live updates: one poller asks the server, every open page gets the changes.

Pages subscribe to *topics*: ``federation``, ``jobs`` and ``job:<id>``. While
a topic has subscribers, :class:`Hub` reads it through the admin API about
once a second (in a worker thread: the admin API is blocking gRPC), diffs it
against what it read last (:mod:`shoal.web.events`) and queues the patch to
each subscriber. A topic nobody watches is not read at all, so a dashboard
with no browser open costs the server nothing.

A subscriber first gets the topic's whole snapshot, then patches in order;
both happen on the event loop with no await between, so none is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread

from shoal.admin.commands import AdminSessionLike
from shoal.web import snapshots
from shoal.web.events import diff

__all__ = ["Hub", "Subscription"]

log = logging.getLogger(__name__)

#: Seconds between reads of a watched topic.
POLL_S = 1.0
#: A finished job changes little: read again this often only.
FINISHED_POLL_S = 15.0
#: Events a slow browser may fall behind before it is dropped (it reconnects
#: and starts again from a snapshot).
QUEUE_SIZE = 256


@dataclass(eq=False)
class Subscription:
    """One open page's topics and its queue of ``(event, data)`` to send."""

    topics: frozenset[str]
    queue: asyncio.Queue[tuple[str, Any]] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    dropped: bool = False

    def put(self, event: str, data: Any) -> None:
        try:
            self.queue.put_nowait((event, data))
        except asyncio.QueueFull:
            # A page this far behind reconnects and starts from a snapshot.
            self.dropped = True


@dataclass
class _Topic:
    snapshot: dict[str, Any] | None = None
    read_at: float = 0.0


def _reader(topic: str) -> Callable[[AdminSessionLike, snapshots.SysInfoCache], dict[str, Any]]:
    if topic == "federation":
        return snapshots.federation
    if topic == "jobs":
        return lambda s, _cache: snapshots.jobs(s)
    if topic.startswith("job:") and len(topic) > 4:
        job_id = topic[4:]
        return lambda s, _cache: snapshots.job(s, job_id)
    raise ValueError(f"unknown topic {topic!r}")


def check_topics(names: Iterable[str]) -> frozenset[str]:
    """The topics named, or ValueError naming one that does not exist."""
    topics = frozenset(names)
    for name in topics:
        _reader(name)
    if not topics:
        raise ValueError("no topic given")
    return topics


class Hub:
    """The poller and its subscribers; runs on the app's event loop."""

    def __init__(self, session: AdminSessionLike, *, poll_s: float = POLL_S) -> None:
        self.session = session
        self.poll_s = poll_s
        self._subs: set[Subscription] = set()
        self._topics: dict[str, _Topic] = {}
        self._cache = snapshots.SysInfoCache()
        self._wake = asyncio.Event()

    def subscribe(self, topics: frozenset[str]) -> Subscription:
        sub = Subscription(topics)
        self._subs.add(sub)
        for name in sorted(topics):
            known = self._topics.setdefault(name, _Topic())
            if known.snapshot is not None:
                sub.put("snapshot", {"topic": name, "data": known.snapshot})
        self._wake.set()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def refresh(self, *topics: str) -> None:
        """Read these topics at the next turn (after an action changed them)."""
        for name in topics:
            if name in self._topics:
                self._topics[name].read_at = 0.0
        self._wake.set()

    def _watched(self) -> set[str]:
        return {name for sub in self._subs for name in sub.topics}

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            watched = self._watched()
            for name in list(self._topics):
                if name not in watched:
                    del self._topics[name]  # read afresh when someone looks again
            for name in sorted(watched):
                await self._poll(name)
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)

    async def _poll(self, name: str) -> None:
        topic = self._topics.setdefault(name, _Topic())
        snapshot = topic.snapshot
        finished = snapshot is not None and snapshot.get("finished") is True
        if finished and time.monotonic() - topic.read_at < FINISHED_POLL_S:
            return
        read = _reader(name)
        try:
            # A read changes nothing: on shutdown it is left to finish alone
            # (a server that went away would hold it for the call's timeout).
            new = await anyio.to_thread.run_sync(
                read, self.session, self._cache, abandon_on_cancel=True
            )
            new["error"] = None
        except Exception as exc:  # the page shows why, the poller goes on
            new = {**(snapshot or {}), "error": snapshots.describe(exc)}
        topic.read_at = time.monotonic()
        patch = diff(snapshot, new)
        if name not in self._topics or patch is None:
            return
        topic.snapshot = new
        for sub in list(self._subs):
            if name in sub.topics:
                if snapshot is None:
                    sub.put("snapshot", {"topic": name, "data": new})
                else:
                    sub.put("patch", {"topic": name, "patch": patch})
