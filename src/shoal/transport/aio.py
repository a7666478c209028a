"""A ``grpc.aio`` server inside a threaded daemon, and how threads wake its calls.

The server daemon holds one stream per connected site (``Connect``) and one
per job worker (``Work``). gRPC's synchronous server gives each held call a
thread and hands every message between its poller thread and that handler
thread; with a thousand sites most of the daemon's CPU went into context
switches. Served by ``grpc.aio``, every call is a coroutine of one event
loop, and a held call costs a suspended coroutine.

The rest of the daemon (scheduler, heartbeat expiry, job runs) stays in
threads. They wake a waiting call with :class:`Wakeup`: one
``call_soon_threadsafe`` per state change, however many calls wait on it.

    server = AioServer.start(host="0.0.0.0", port=0, tls=tls,
                             register=[lambda s: add_service(s, servicer, "Fleet")])
    server.port          # bound before start() returns
    server.stop(grace=1.0)

A transfer on such a stream holds resources the whole federation shares (a
transfer slot), so it runs under a :class:`StallWatch`: a peer that stops
sending or reading loses it after a while without progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from types import TracebackType
from typing import Any, Generic, TypeVar

import grpc

from shoal.errors import TransportError
from shoal.transport.channels import bind_port, server_options
from shoal.transport.tls import TLSSource

__all__ = ["AioServer", "StallWatch", "StalledError", "Ticking", "Wakeup"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class AioServer:
    """A ``grpc.aio`` server on an event loop of its own, run by a thread of its own."""

    def __init__(self, *, name: str) -> None:
        self.name = name
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._server: grpc.aio.Server | None = None
        self._thread = threading.Thread(target=self._run_loop, name=name, daemon=True)
        self._thread.start()

    @classmethod
    def start(
        cls,
        *,
        host: str,
        port: int,
        tls: TLSSource,
        register: list[Callable[[grpc.aio.Server], None]],
        name: str = "grpc-aio",
    ) -> AioServer:
        """Bind ``host:port`` with mutual TLS (port 0: a free one) and start serving.

        ``register`` holds callables ``f(server)`` adding servicers whose
        methods are coroutines. Raises TransportError if the port cannot be bound.
        """
        self = cls(name=name)
        try:
            self.port = self.call(self._start(host, port, tls, register))
        except BaseException:
            self.stop(grace=0)
            raise
        return self

    async def _start(
        self,
        host: str,
        port: int,
        tls: TLSSource,
        register: list[Callable[[grpc.aio.Server], None]],
    ) -> int:
        # Made on the loop: a grpc.aio server belongs to the loop it is made on.
        server = grpc.aio.server(options=server_options(), maximum_concurrent_rpcs=None)
        for add in register:
            add(server)
        bound = bind_port(server, host, port, tls)
        await server.start()
        self._server = server
        return bound

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the server's loop from another thread; its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace: float) -> None:
        """Stop accepting calls, give running ones ``grace`` seconds, cancel the
        rest, and end the loop and its thread. Safe to call more than once."""
        server, self._server = self._server, None
        if server is not None and self._thread.is_alive():
            try:
                self.call(server.stop(grace), timeout=grace + 10)
            except Exception:
                log.exception("%s: the server did not stop cleanly", self.name)
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            # Calls still running when the server was stopped were cancelled;
            # let them unwind (their finally blocks end sessions) before closing.
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            if tasks:
                self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()


class Wakeup:
    """Wakes the coroutines waiting on it, from any thread.

    A waiter checks its condition, then waits; ``fire()`` from the thread
    that changed the state runs ``_wake`` on the loop *after* the waiter
    suspended, so no wake-up is lost between the check and the wait:

        wakeup = Wakeup()                    # on the loop
        board.on_change(wakeup.fire)         # from any thread
        while (task := board.take()) is None:
            await wakeup.wait(timeout)
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._waiters: set[asyncio.Future[None]] = set()

    def fire(self) -> None:
        """Wake every current waiter (thread-safe, never blocks)."""
        # A closed loop has no waiters left to wake.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait(self, timeout: float | None = None) -> None:
        """Until the next ``fire()`` or ``timeout`` seconds, whichever is first."""
        fut = self._loop.create_future()
        self._waiters.add(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            self._waiters.discard(fut)


class StalledError(TransportError):
    """A transfer moved no data for longer than its :class:`StallWatch` allows."""


class StallWatch:
    """Ends the block it guards once nothing moved for ``limit_s`` seconds.

    The guarded code calls :meth:`tick` whenever data moved (a chunk read or
    written); when the last tick is ``limit_s`` old the watch cancels the
    task, and the block raises :class:`StalledError` instead of the
    cancellation. A tick costs a clock read: the watch's own timer wakes at
    most once per ``limit_s`` (re-armed from the last tick), not per chunk,
    so the hot path pays no ``wait_for`` (a task and a timer each) per chunk.

        watch = StallWatch(30.0, "task to site-1")
        async with watch:
            for frame in frames:
                await context.write(frame)   # a peer that never reads blocks here
                watch.tick()
    """

    def __init__(self, limit_s: float, what: str) -> None:
        self.limit_s = limit_s
        self.what = what
        self.stalled = False
        self._clock = time.monotonic  # what the loop's time() reads, minus a call
        self._last = self._clock()
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self._timer: asyncio.TimerHandle | None = None

    def tick(self) -> None:
        """Data moved: the stall clock starts again."""
        self._last = self._clock()

    async def __aenter__(self) -> StallWatch:
        self._task = asyncio.current_task()
        assert self._task is not None, "StallWatch needs a task"
        # Python 3.11+ counts cancellations (3.10 does not): see __aexit__.
        self._cancelling = getattr(self._task, "cancelling", lambda: 0)()
        self.tick()
        self._arm()
        return self

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        # loop.time() is time.monotonic(): the deadline is the last tick's plus the limit.
        self._timer = loop.call_at(self._last + self.limit_s, self._check)

    def _check(self) -> None:
        if self._clock() - self._last < self.limit_s:
            self._arm()  # it moved since: wait out the rest of the limit from the last tick
            return
        self.stalled = True
        assert self._task is not None
        self._task.cancel(f"{self.what}: stalled")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if not self.stalled:
            return
        # As asyncio.timeout: take back our own cancellation, and only ours
        # (a cancellation from elsewhere, e.g. the peer going away, stays one).
        uncancel = getattr(self._task, "uncancel", None)
        ours = uncancel is None or uncancel() <= self._cancelling
        if ours and exc_type is asyncio.CancelledError:
            raise StalledError(
                f"{self.what}: no data moved for {self.limit_s:g} s; transfer cancelled"
            )


class Ticking(Generic[T]):
    """An async iterator of frames that ticks ``watch`` for each one it hands on:
    a payload read through it counts as progress for the watch."""

    def __init__(self, frames: AsyncIterator[T], watch: StallWatch) -> None:
        self._frames = frames
        self._watch = watch

    def __aiter__(self) -> Ticking[T]:
        return self

    async def __anext__(self) -> T:
        frame = await anext(self._frames)
        self._watch.tick()
        return frame
