"""An authenticated site tries to hold the server's model-transfer slots
(issue 16, finding 2): it announces large results and never sends them, or
opens many Work streams, says "ready" and never reads its task. Either way a
job of another site with a model too big to ride inline (> 256 KiB, so every
transfer needs a slot) still completes, and the abuser's streams are ended.

The attacker holds site-1's key and runs no daemon; the server's stall
timeout is made short through $SHOAL_TRANSFER_STALL_S.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from faults.harness import Fed, wait_for, write_job  # noqa: I001

from shoal._proto import shoal_pb2 as pb
from shoal._proto import shoal_pb2_grpc as pb_grpc
from shoal.admin.session import AdminSession
from shoal.client.worker import GrpcBackend, WorkerConfig
from shoal.provision import load_kit
from shoal.transport import PayloadHeader, read_header
from shoal.transport.frames import receive_bytes

from .conftest import fleet_stub

pytestmark = pytest.mark.slow

#: The server's stall timeout in these tests (the default is 30 s).
STALL_S = 2
#: A model of this many float32 weights travels chunked: every transfer of
#: it needs a slot.
LARGE = 100_000


class Abuser:
    """site-1, driven by hand: a Connect session and Work streams that send
    what the test says and then hold still, never closing their side."""

    def __init__(self, fed: Fed) -> None:
        self.stub: pb_grpc.FleetStub = fleet_stub(fed, "site-1")
        self.events: queue.Queue[pb.ServerEvent] = queue.Queue()
        self._hold = threading.Event()
        self.calls: list[grpc.RpcError] = []  # the calls are also their own errors
        session = self.stub.Connect(pb.Hello(site="site-1"))

        def pump() -> None:
            try:
                for ev in session:
                    self.events.put(ev)
            except grpc.RpcError:
                pass

        threading.Thread(target=pump, daemon=True).start()

    def started_job(self, job_id: str) -> None:
        while True:  # the server pushes the job start down site-1's session
            ev = self.events.get(timeout=60)
            if ev.WhichOneof("body") == "start_job" and ev.start_job.job_id == job_id:
                return

    def open(self, *frames: pb.Frame) -> grpc.RpcError:
        """A Work stream that sends ``frames`` and then nothing, ever."""

        def requests() -> Iterator[pb.Frame]:
            yield from frames
            self._hold.wait()

        call = self.stub.Work(requests())
        self.calls.append(call)
        return call

    def release(self) -> None:
        self._hold.set()


def ended(call: grpc.RpcError, timeout: float = 30) -> grpc.StatusCode:
    """Read what is left of ``call`` until the server ends it; its status."""
    out: queue.Queue[grpc.StatusCode | None] = queue.Queue()

    def drain() -> None:
        try:
            for _ in call:  # type: ignore[attr-defined]
                pass
        except grpc.RpcError as exc:
            out.put(exc.code())
            return
        out.put(None)

    threading.Thread(target=drain, daemon=True).start()
    try:
        code = out.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"the server did not end the stream within {timeout} s") from None
    assert code is not None, "the stream ended without an error"
    return code


def _federation(fed_factory, **server_kw) -> tuple[Fed, AdminSession, Abuser]:  # type: ignore[no-untyped-def]
    fed = fed_factory()
    fed.env["SHOAL_TRANSFER_STALL_S"] = str(STALL_S)
    # Long enough that the abuser's session (which never beats) outlives the test.
    fed.start_server(heartbeat_s=300, **server_kw)
    fed.start_site("site-2")
    admin = fed.admin()
    abuser = Abuser(fed)
    fed.wait_connected(admin, ["site-1", "site-2"])
    return fed, admin, abuser


def _abused_job(fed: Fed, admin: AdminSession, abuser: Abuser, tmp: Path, size: int) -> str:
    """A job of site-1 alone, running for as long as the test needs."""
    job = write_job(tmp / "abused", name="abused", size=size, num_rounds=1,
                    round_timeout_s=600, sites=["site-1"])  # fmt: skip
    job_id = admin.submit_job(job)
    abuser.started_job(job_id)
    return job_id


def _healthy_job_completes(admin: AdminSession, tmp: Path) -> None:
    """A job of site-2 alone, with a model that needs a slot per transfer."""
    job = write_job(tmp / "healthy", name="healthy", size=LARGE, num_rounds=2,
                    sites=["site-2"])  # fmt: skip
    job_id = admin.submit_job(job)
    try:
        meta = admin.wait_for_job(job_id, timeout=120)
    except TimeoutError as exc:
        raise AssertionError(f"site-1 froze site-2's job: {exc}") from None
    assert meta["status"] == "FINISHED:COMPLETED", meta


def test_result_headers_without_data_lose_their_slot(fed_factory, tmp_path: Path):
    # One slot in all: the finding's eight, taken by eight sites' worth of
    # headers, in miniature (one site's result uploads are one at a time per
    # task, so at the default one site could only take one of eight).
    fed, admin, abuser = _federation(fed_factory, extra_args=["--max-transfers", "1"])
    job_id = _abused_job(fed, admin, abuser, tmp_path, size=LARGE)

    # The abuser takes its task like a worker would, then announces a large
    # result for it and is told "go": it holds the only slot and sends nothing.
    ready = PayloadHeader("ready", job_id, size=0, meta={"wait_s": 30})
    frames = abuser.stub.Work(iter([pb.Frame(header=ready.to_pb())]))
    task = read_header(frames)
    assert task.kind == "task" and task.size > 256 * 1024, task
    receive_bytes(task, frames, max_size=1 << 30)
    meta = {"site": "site-1", "num_examples": 10, "metrics": {}}
    result = PayloadHeader("result", job_id, task.task_id, 4 * LARGE + 1024, meta)
    first = abuser.open(pb.Frame(header=result.to_pb()))
    assert read_header(iter(first)).kind == "go"  # type: ignore[arg-type]
    # ... and announces it again on more streams.
    others = [abuser.open(pb.Frame(header=result.to_pb())) for _ in range(7)]

    _healthy_job_completes(admin, tmp_path)

    # The silent upload was ended for stalling; the second announcements of
    # a result already arriving were refused (or stalled in their turn).
    assert ended(first) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert first.details() and "no data moved" in first.details()  # type: ignore[attr-defined]
    codes = {ended(c) for c in others}
    # ABORTED: "already arriving", a refusal the sender may try again after.
    assert codes <= {grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED}, codes
    abuser.release()


def test_a_result_whose_earlier_upload_stalled_is_taken_once_the_stall_ends(
    fed_factory, tmp_path: Path
):
    """After a partition the server may still be receiving a site's result on
    the dead worker's stream when the site's new worker sends it again. The
    new upload is told "already arriving" (BusyError), offers the result again,
    and gets in once the stall watch has ended the dead one: the round counts
    the site, instead of missing it."""
    fed, admin, abuser = _federation(fed_factory)
    job_id = _abused_job(fed, admin, abuser, tmp_path, size=LARGE)
    # The dead worker: it took the round's task and announced its result
    # (told "go"), then its link died with no byte of the data sent.
    ready = PayloadHeader("ready", job_id, size=0, meta={"wait_s": 30})
    frames = abuser.stub.Work(iter([pb.Frame(header=ready.to_pb())]))
    task = read_header(frames)
    receive_bytes(task, frames, max_size=1 << 30)
    meta = {"site": "site-1", "num_examples": 10, "metrics": {}}
    dead = abuser.open(pb.Frame(header=PayloadHeader("result", job_id, task.task_id,
                                                     4 * LARGE + 1024, meta).to_pb()))  # fmt: skip
    assert read_header(iter(dead)).kind == "go"  # type: ignore[arg-type]

    # The new worker, as the site daemon starts it: the round's task again, a result.
    startup = load_kit(fed.kits["site-1"]).root / "startup"
    config = WorkerConfig(
        server_address=f"127.0.0.1:{fed.fed_port}",
        server_name="server1",
        ca_path=str(startup / "rootCA.pem"),
        cert_path=str(startup / "client.crt"),
        key_path=str(startup / "client.key"),
        job_id=job_id,
        site_name="site-1",
        site_index=0,
        num_sites=1,
        job_dir=str(tmp_path),
    )
    worker = GrpcBackend(config)
    try:
        model = worker.next_task()
        assert model is not None
        model.num_examples = 10
        worker.send(model)  # BusyError while the dead upload holds the result; then in
    finally:
        worker.close()

    meta_after = admin.wait_for_job(job_id, timeout=60)
    assert meta_after["status"] == "FINISHED:COMPLETED", meta_after
    assert ended(dead) == grpc.StatusCode.DEADLINE_EXCEEDED
    rounds = fed.metrics(job_id)
    assert [sorted(r["sites"]) for r in rounds] == [["site-1"]], rounds
    abuser.release()


def test_ready_streams_that_never_read_lose_their_slots(fed_factory, tmp_path: Path):
    fed, admin, abuser = _federation(fed_factory)
    # Big enough that the server's writes block on gRPC flow control long
    # before the task is through: each stream that gets it holds a slot.
    job_id = _abused_job(fed, admin, abuser, tmp_path, size=4_000_000)

    # As many "ready"s as the server has slots (8 by default), none ever read.
    ready = PayloadHeader("ready", job_id, size=0, meta={"wait_s": 30})
    calls = [abuser.open(pb.Frame(header=ready.to_pb())) for _ in range(8)]
    wait_for(lambda: "offered to site-1" in fed.tail("server1", 200), 60, "the abused task")

    _healthy_job_completes(admin, tmp_path)

    # One of the abuser's task transfers at a time held a slot until it
    # stalled; once stalled ones were left open, the rest were refused. Each
    # of the eight is accounted for in the server's log, whichever way it
    # went: stalled and cancelled, refused, or (gRPC's receive window on the
    # abuser's side can grow until a 4 MB task fits in its buffers, unread)
    # sent whole, holding its slot only while it moved data. How many stall
    # before the refusals start varies: an abort may leave at once or wait
    # behind the unread chunk.
    def settled() -> bool:
        log = fed.tail("server1", 2000)
        handled = (
            log.count("to site-1: no data moved")
            + log.count("refused a transfer to site-1")
            + log.count("task of round 1 to site-1")
        )
        return handled >= len(calls)

    wait_for(settled, 60, "the server to end, refuse or finish each of the abuser's streams")
    codes = [ended(c) for c in calls if c.done()]  # type: ignore[attr-defined]
    assert set(codes) <= {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
    abuser.release()
