"""The Fleet service on its grpc.aio server, in this process, over real mutual
TLS from provisioned kits: held calls take no thread, threads that change the
task board or a session wake the calls waiting on it at once, and daemons
start and stop without leaving threads behind."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from shoal import poc
from shoal._proto import shoal_pb2 as pb
from shoal.errors import TransportError
from shoal.provision import load_kit
from shoal.server.daemon import ServerDaemon, ServerOptions
from shoal.server.ipc import IpcChannel
from shoal.server.jobrun import _STOP_SENDING, JobRun
from shoal.server.store import JobRecord
from shoal.transport import PayloadHeader, channel_credentials
from shoal.transport.channels import channel_options
from shoal.transport.frames import frames_from_bytes, read_header_async, receive_bytes_async
from shoal.transport.services import ServiceStub


@contextlib.contextmanager
def running_server(
    layout: poc.PocLayout, workspace: Path, **options: Any
) -> Iterator[ServerDaemon]:
    daemon = ServerDaemon(
        load_kit(layout.server_kit, expected_type="server"),
        ServerOptions(
            host="127.0.0.1",
            fed_port=0,
            admin_port=0,
            health_port=-1,
            workspace=workspace,
            **options,
        ),
    )
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop("test over")


def fleet(layout: poc.PocLayout, site: str, port: int) -> tuple[grpc.aio.Channel, Any]:
    """A grpc.aio channel holding ``site``'s certificate, and a Fleet stub on it."""
    tls = load_kit(layout.site_kits[site]).tls
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{port}", channel_credentials(tls), options=channel_options("server1")
    )
    return channel, ServiceStub(channel, "Fleet")


def wait_until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_held_connect_streams_take_no_thread_and_get_pushed_events_at_once(
    tmp_path: Path,
) -> None:
    n = 200
    layout = poc.prepare(tmp_path / "poc", num_sites=n)
    with running_server(layout, tmp_path / "ws") as server:
        port = server.ports["fed"]
        threads_before = threading.active_count()
        seen: dict[str, Any] = {}

        async def main() -> None:
            stubs = [fleet(layout, site, port) for site in layout.site_kits]
            calls = [
                stub.Connect(pb.Hello(site=site))
                for (_, stub), site in zip(stubs, layout.site_kits, strict=True)
            ]
            welcomes = await asyncio.gather(*(call.read() for call in calls))
            assert {w.WhichOneof("body") for w in welcomes} == {"welcome"}
            seen["connected"] = len(server.registry.connected())
            seen["threads"] = threading.active_count()
            # An event pushed from another thread reaches its held stream at once.
            t0 = time.monotonic()
            pusher = threading.Thread(
                target=server.registry.get("site-7").push,  # type: ignore[union-attr]
                args=(pb.ServerEvent(abort_job=pb.AbortJob(job_id="j", reason="test")),),
            )
            pusher.start()
            event = await asyncio.wait_for(calls[6].read(), 5)
            seen["push_s"] = time.monotonic() - t0
            assert event.abort_job.job_id == "j"
            pusher.join()
            for call in calls:
                call.cancel()
            for channel, _ in stubs:
                await channel.close()

        asyncio.run(main())
        assert seen["connected"] == n
        # The synchronous server held a thread per stream: 200 here.
        assert seen["threads"] - threads_before <= 2, seen
        assert seen["push_s"] < 1.0, seen
        # A stream the site closes ends its session.
        wait_until(lambda: not server.registry.connected(), 10, "the sessions to end")


def _run(tmp_path: Path, server: ServerDaemon, sites: list[str]) -> tuple[JobRun, IpcChannel]:
    """A job on the server's task board whose workflow process is the test:
    the test scatters and reads what the daemon sends it."""
    folder = tmp_path / "job"
    (folder / "run").mkdir(parents=True)
    record = JobRecord(
        job_id="job-1",
        name="t",
        status="RUNNING",
        submit_time="2024-01-01T00:00:00+00:00",
        start_time=None,
        end_time=None,
        submitter="admin@nvidia.com",
        submitter_org="nvidia",
        spec={},
        sites=sites,
        current_round=None,
        num_rounds=None,
        error=None,
        attempts=1,
        package_sha256="",
        package_size=0,
        folder=folder,
    )
    run = JobRun(record, sites=sites, on_end=lambda *a: None)
    ours, theirs = socket.socketpair()
    run.ipc = IpcChannel(ours)
    threading.Thread(target=run._write_ipc, daemon=True).start()
    server.runs.add(run)
    return run, IpcChannel(theirs)


def test_held_work_streams_are_woken_by_a_scatter_and_carry_results_and_rounds(
    tmp_path: Path,
) -> None:
    layout = poc.prepare(tmp_path / "poc", num_sites=2)
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"w" * 1000)
    big = b"R" * 200_000
    with running_server(layout, tmp_path / "ws") as server:
        run, workflow = _run(tmp_path, server, ["site-1", "site-2"])
        port = server.ports["fed"]
        out: dict[str, Any] = {}

        async def main() -> None:
            channel, stub = fleet(layout, "site-1", port)
            held = 20
            threads_before = threading.active_count()
            calls = [stub.Work() for _ in range(held)]
            for call in calls:
                await call.write(_ready())
            answers = [asyncio.ensure_future(_payload(call)) for call in calls]
            await asyncio.sleep(0.5)
            out["threads_held"] = threading.active_count() - threads_before
            assert not any(a.done() for a in answers)
            # The IPC reader thread is where a scatter comes from.
            t0 = time.monotonic()
            await asyncio.to_thread(run._handle, _scatter("task-1", 1, weights))
            got = await asyncio.wait_for(asyncio.gather(*answers), 10)
            out["wake_s"] = time.monotonic() - t0
            for header, data in got:
                assert (header.kind, header.task_id) == ("task", "task-1")
                assert data == b"w" * 1000

            # Results on the same streams: a small one inline in the IPC
            # message, a large one as a file; each acknowledged on the stream.
            small = PayloadHeader("result", "job-1", "task-1", meta={"num_examples": 3})
            ack = await _put(calls[0], frames_from_bytes(small, b"r" * 100))
            assert (ack.kind, ack.task_id, ack.meta["round"]) == ("ack", "task-1", 1)
            channel2, stub2 = fleet(layout, "site-2", port)
            work2 = stub2.Work()
            await work2.write(_ready())
            assert (await _payload(work2))[0].task_id == "task-1"
            assert (await _put(work2, frames_from_bytes(small, big, inline_max=0))).kind == "ack"
            # The stream carries on: the next round's task comes down it.
            await work2.write(_ready())
            next_task = asyncio.ensure_future(_payload(work2))
            await asyncio.to_thread(run._handle, _scatter("task-2", 2, weights))
            header, _ = await asyncio.wait_for(next_task, 10)
            assert (header.kind, header.task_id, header.meta["round"]) == ("task", "task-2", 2)
            # A result for the superseded task is refused: the stream ends with why.
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _put(calls[1], frames_from_bytes(small, b"r" * 100))
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "superseded" in (info.value.details() or "")

            # A new stream: site-1 answers round 2, then waits; the job
            # finishing answers the waiting "ready" with "done".
            waiting = stub.Work()
            await waiting.write(_ready())
            assert (await _payload(waiting))[0].task_id == "task-2"
            small2 = PayloadHeader("result", "job-1", "task-2", meta={"num_examples": 3})
            assert (await _put(waiting, frames_from_bytes(small2, b"r" * 100))).kind == "ack"
            await waiting.write(_ready())
            answer = asyncio.ensure_future(_payload(waiting))
            await asyncio.sleep(0.3)
            await asyncio.to_thread(run._handle, {"op": "finish"})
            done, _ = await asyncio.wait_for(answer, 10)
            assert done.kind == "done"
            for call in (*calls, work2, waiting):
                call.cancel()
            await channel.close()
            await channel2.close()

        asyncio.run(main())
        assert out["threads_held"] <= 1, out
        assert out["wake_s"] < 2.0, out
        first, second = workflow.recv(timeout=10), workflow.recv(timeout=10)
        assert first is not None and second is not None
        by_site = {m["site"]: m for m in (first, second)}
        assert by_site["site-1"]["op"] == "result" and by_site["site-1"]["num_examples"] == 3
        assert "data_b64" in by_site["site-1"]
        path = Path(by_site["site-2"]["path"])
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(big).digest()
        assert not [p for p in path.parent.iterdir() if p.name.endswith(".partial")]
        run._outbox.put(_STOP_SENDING)
        workflow.close()
        run.ipc.close()


def _ready(wait_s: float = 30) -> pb.Frame:
    return pb.Frame(header=PayloadHeader("ready", "job-1", size=0, meta={"wait_s": wait_s}).to_pb())


def _scatter(task_id: str, round_: int, weights: Path) -> dict[str, Any]:
    return {
        "op": "scatter",
        "task_id": task_id,
        "task": "train",
        "round": round_,
        "weights_path": str(weights),
        "sites": ["site-1", "site-2"],
        "meta": {},
    }


async def _payload(call: Any) -> tuple[PayloadHeader, bytes]:
    """The next payload down a Work stream: its header, and its bytes."""
    replies = aiter(call)
    header = await read_header_async(replies)
    if header.kind != "task":
        return header, b""
    return header, await receive_bytes_async(header, replies, max_size=1 << 20)


async def _put(call: Any, frames: Any) -> PayloadHeader:
    """A result up a Work stream, as a worker sends it (a result too big for
    its header: the header, then the rest on "go"); the header that answers it."""
    it = iter(frames)
    first = next(it)
    await call.write(first)
    if not first.header.inline_xxh3_128:
        go = await read_header_async(aiter(call))
        if go.kind != "go":
            return go
    for frame in it:
        await call.write(frame)
    return await read_header_async(aiter(call))


def test_a_large_result_streams_on_go_once_a_transfer_slot_is_free(tmp_path: Path) -> None:
    layout = poc.prepare(tmp_path / "poc", num_sites=2)
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"w" * 1000)
    big = b"R" * 300_000
    with running_server(layout, tmp_path / "ws", max_transfers=1) as server:
        run, workflow = _run(tmp_path, server, ["site-1", "site-2"])
        port = server.ports["fed"]

        async def main() -> None:
            (ch1, stub1), (ch2, stub2) = (
                fleet(layout, "site-1", port),
                fleet(layout, "site-2", port),
            )
            w1, w2 = stub1.Work(), stub2.Work()
            for w in (w1, w2):
                await w.write(_ready())
            await asyncio.to_thread(run._handle, _scatter("task-1", 1, weights))
            for w in (w1, w2):
                assert (await _payload(w))[0].task_id == "task-1"
            meta = {"num_examples": 3}
            r1 = list(frames_from_bytes(PayloadHeader("result", "job-1", "task-1", meta=meta), big))
            r2 = list(frames_from_bytes(PayloadHeader("result", "job-1", "task-1", meta=meta), big))
            assert len(r1) > 2  # header, data, trailer: too big to ride in its header
            # site-1 announces its result and gets the only slot, but sends nothing yet.
            await w1.write(r1[0])
            assert (await read_header_async(aiter(w1))).kind == "go"
            # site-2's announcement waits: no "go" while the slot is taken.
            await w2.write(r2[0])
            go2 = asyncio.ensure_future(read_header_async(aiter(w2)))
            await asyncio.sleep(0.5)
            assert not go2.done()
            for frame in r1[1:]:
                await w1.write(frame)
            assert (await read_header_async(aiter(w1))).kind == "ack"
            assert (await asyncio.wait_for(go2, 10)).kind == "go"
            for frame in r2[1:]:
                await w2.write(frame)
            assert (await read_header_async(aiter(w2))).kind == "ack"
            # A result nobody wants is refused at its header: no "go", nothing streamed.
            stale = PayloadHeader("result", "job-1", "task-0", meta=meta)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _put(w1, frames_from_bytes(stale, big))
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            for w in (w1, w2):
                w.cancel()
            await ch1.close()
            await ch2.close()

        asyncio.run(main())
        got = [workflow.recv(timeout=10) for _ in range(2)]
        assert sorted(m["site"] for m in got if m) == ["site-1", "site-2"]
        for m in got:
            assert m and Path(m["path"]).read_bytes() == big
        run._outbox.put(_STOP_SENDING)
        workflow.close()
        run.ipc.close()


def test_daemons_start_and_stop_without_leaving_threads(tmp_path: Path) -> None:
    layout = poc.prepare(tmp_path / "poc", num_sites=1)
    baseline = 0
    for i in range(4):
        with running_server(layout, tmp_path / f"ws{i}") as server:
            assert server.ports["fed"] > 0 and server.ports["admin"] > 0
            names = {t.name for t in threading.enumerate()}
            assert "fleet-loop" in names
            # The port is bound when start() returns.
            with socket.create_connection(("127.0.0.1", server.ports["fed"]), timeout=5):
                pass
        wait_until(
            lambda: "fleet-loop" not in {t.name for t in threading.enumerate()},
            5,
            "the Fleet loop thread to end",
        )
        if i == 0:
            # The first start may leave gRPC's process-wide poller thread.
            baseline = threading.active_count()
        else:
            wait_until(lambda: threading.active_count() <= baseline, 5, "threads to end")  # noqa: B023


def test_a_taken_fed_port_fails_start_and_leaves_no_loop_thread(tmp_path: Path) -> None:
    layout = poc.prepare(tmp_path / "poc", num_sites=1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        daemon = ServerDaemon(
            load_kit(layout.server_kit, expected_type="server"),
            ServerOptions(
                host="127.0.0.1",
                fed_port=taken.getsockname()[1],
                admin_port=0,
                health_port=-1,
                workspace=tmp_path / "ws",
            ),
        )
        with pytest.raises(TransportError, match="cannot listen"):
            daemon.start()
    assert "fleet-loop" not in {t.name for t in threading.enumerate()}
