"""What gRPC's retry policy in ``open_channel``'s service config does, on real
gRPC with mutual TLS: a worker's ``Work`` call waits for a server that is not
up yet, and is made again when the server ends it before answering
(NOT_FOUND, at most 5 attempts), never once it has answered; ``Connect``
fails at once. What is left (a stream broken after an answer, a NOT_FOUND past
5 attempts) is the worker's loop's (``shoal.client.worker``)."""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from shoal.errors import NotFoundError, UnavailableError
from shoal.provision import Kit
from shoal.transport import from_rpc_error, open_channel, start_server


class _Fleet:
    """``shoal.v1.Fleet`` with a scripted ``Work``: NOT_FOUND for the first
    ``not_found`` calls, then "task" (and, if ``break_after_task``, UNAVAILABLE)."""

    def __init__(self, *, not_found: int = 0, break_after_task: bool = False) -> None:
        self.not_found = not_found
        self.break_after_task = break_after_task
        #: The first message of each call the server saw.
        self.calls: list[bytes | None] = []

    def work(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self.calls.append(next(requests, None))
        if len(self.calls) <= self.not_found:
            context.abort(grpc.StatusCode.NOT_FOUND, "job j is not running")
        yield b"task"
        if self.break_after_task:
            context.abort(grpc.StatusCode.UNAVAILABLE, "server going away")

    def connect(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield b"welcome"

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "shoal.v1.Fleet",
            {
                "Work": grpc.stream_stream_rpc_method_handler(self.work),
                "Connect": grpc.unary_stream_rpc_method_handler(self.connect),
            },
        )


def _serve(kits: dict[str, Kit], fleet: _Fleet, port: int = 0) -> tuple[grpc.Server, int]:
    return start_server(
        host="127.0.0.1",
        port=port,
        tls=kits["server1"].tls,
        register=[lambda s: s.add_generic_rpc_handlers((fleet.handler(),))],
        max_workers=8,
    )


def _work(channel: grpc.Channel, timeout: float = 30) -> list[bytes]:
    """Say "ready" on a Work stream; the replies until it ends."""
    outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    outbox.put(b"ready")

    def requests() -> Iterator[bytes]:
        while (m := outbox.get()) is not None:
            yield m

    call = channel.stream_stream("/shoal.v1.Fleet/Work")(requests(), timeout=timeout)
    got: list[bytes] = []
    try:
        for reply in call:
            got.append(reply)
            outbox.put(None)  # done sending: the call ends with the server's status
    finally:
        outbox.put(None)
    return got


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_work_waits_for_a_server_that_is_not_up_yet_and_connect_does_not(
    kits: dict[str, Kit],
) -> None:
    port = _free_port()
    fleet = _Fleet()
    with open_channel(f"127.0.0.1:{port}", kits["site-1"].tls, server_name="server1") as ch:
        # Connect fails at once, with the reason: the site daemon logs it.
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            next(iter(ch.unary_stream("/shoal.v1.Fleet/Connect")(b"hello", timeout=30)))
        assert time.monotonic() - t0 < 10
        err = from_rpc_error(info.value, "Connect")
        assert isinstance(err, UnavailableError) and "Connect: " in str(err)

        replies: list[bytes] = []
        worker = threading.Thread(target=lambda: replies.extend(_work(ch)))
        worker.start()
        time.sleep(1.5)
        assert worker.is_alive() and not fleet.calls  # waiting, not failing
        server, _ = _serve(kits, fleet, port)
        try:
            worker.join(30)
            assert replies == [b"task"]
            assert fleet.calls == [b"ready"]
        finally:
            server.stop(None).wait(5)


def test_not_found_before_an_answer_is_retried_with_the_ready_replayed(
    kits: dict[str, Kit],
) -> None:
    fleet = _Fleet(not_found=2)
    server, port = _serve(kits, fleet)
    try:
        with open_channel(f"127.0.0.1:{port}", kits["site-1"].tls, server_name="server1") as ch:
            assert _work(ch) == [b"task"]
        assert fleet.calls == [b"ready"] * 3
    finally:
        server.stop(None).wait(5)


def test_grpc_gives_up_after_5_attempts(kits: dict[str, Kit]) -> None:
    fleet = _Fleet(not_found=100)
    server, port = _serve(kits, fleet)
    try:
        with (
            open_channel(f"127.0.0.1:{port}", kits["site-1"].tls, server_name="server1") as ch,
            pytest.raises(grpc.RpcError) as info,
        ):
            _work(ch)
        assert isinstance(from_rpc_error(info.value, "waiting for a task"), NotFoundError)
        assert len(fleet.calls) == 5  # the worker's own loop takes it from here
    finally:
        server.stop(None).wait(5)


def test_a_stream_broken_after_an_answer_is_not_retried(kits: dict[str, Kit]) -> None:
    fleet = _Fleet(break_after_task=True)
    server, port = _serve(kits, fleet)
    try:
        with open_channel(f"127.0.0.1:{port}", kits["site-1"].tls, server_name="server1") as ch:
            outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
            outbox.put(b"ready")
            call = ch.stream_stream("/shoal.v1.Fleet/Work")(iter(outbox.get, None), timeout=30)
            assert next(call) == b"task"
            with pytest.raises(grpc.RpcError) as info:
                next(call)
            outbox.put(None)
        assert isinstance(from_rpc_error(info.value, "waiting for a task"), UnavailableError)
        assert fleet.calls == [b"ready"]
    finally:
        server.stop(None).wait(5)
