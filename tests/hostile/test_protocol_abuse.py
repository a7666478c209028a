"""An attacker holding site-1's key talks to a real server running a job with
raw Fleet stubs: every malformed, misdirected or poisoned result is refused,
nothing partial is stored, and the global model only ever holds site-2's
honest updates.

site-1's daemon is never started: the attacker *is* site-1.
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from faults.harness import wait_for, write_job  # noqa: I001

from shoal import checksum
from shoal._proto import shoal_pb2 as pb
from shoal.arrays import load_arrays, save_arrays
from shoal.transport import PayloadHeader, read_header
from shoal.transport.frames import receive_bytes

from .conftest import fleet_stub

pytestmark = pytest.mark.slow


def _frames(header: PayloadHeader, data: bytes, *, size: int | None = None,
            sha: str | None = None, trailer: bool = True,
            chunk: int = 1 << 20) -> Iterator[pb.Frame]:  # fmt: skip
    h = PayloadHeader(header.kind, header.job_id, header.task_id,
                      len(data) if size is None else size, header.meta)  # fmt: skip
    yield pb.Frame(header=h.to_pb())
    for i in range(0, len(data), chunk):
        yield pb.Frame(data=data[i : i + chunk])
    if trailer:
        yield pb.Frame(trailer=pb.Trailer(xxh3_128=sha or checksum.of_bytes(data)))


def _refused(call, code: grpc.StatusCode) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, (info.value.code(), info.value.details())
    return str(info.value.details())


def _encode(arrays: dict[str, np.ndarray], tmp: Path) -> bytes:
    path = tmp / f"{uuid.uuid4().hex}.safetensors"
    save_arrays(path, arrays)
    return path.read_bytes()


def test_authenticated_site_cannot_inject_bad_results(fed_factory, tmp_path: Path):
    fed = fed_factory()
    fed.start_server(heartbeat_s=60)
    fed.start_site("site-2")
    admin = fed.admin()
    fed.wait_connected(admin, ["site-2"])
    stub = fleet_stub(fed, "site-1")
    big_stub = fleet_stub(fed, "site-1", unlimited=True)

    # Identity is the certificate: site-1's key cannot register as site-2.
    bad = stub.Connect(pb.Hello(site="site-2"))
    assert _refused(lambda: next(bad), grpc.StatusCode.PERMISSION_DENIED)

    events: queue.Queue[pb.ServerEvent] = queue.Queue()
    session = stub.Connect(pb.Hello(site="site-1"))

    def pump() -> None:
        try:
            for ev in session:
                events.put(ev)
        except grpc.RpcError:
            pass

    threading.Thread(target=pump, daemon=True).start()
    fed.wait_connected(admin, ["site-1", "site-2"])

    rounds = 6
    job = write_job(tmp_path / "job", num_rounds=rounds, min_clients=1, round_timeout_s=120,
                    sites=["site-1", "site-2"])  # fmt: skip
    job_id = admin.submit_job(job)
    run_dir = fed.run_dir(job_id)
    while True:  # the server pushes the job start down site-1's session
        ev = events.get(timeout=60)
        if ev.WhichOneof("body") == "start_job":
            assert ev.start_job.job_id == job_id
            break

    def task() -> tuple[PayloadHeader, dict[str, np.ndarray]]:
        ready = PayloadHeader("ready", job_id, size=0, meta={"wait_s": 30})
        frames = stub.Work(iter([pb.Frame(header=ready.to_pb())]))
        header = read_header(frames)
        assert header.kind == "task", header
        data = receive_bytes(header, frames, max_size=1 << 30)
        path = tmp_path / f"{header.task_id}.safetensors"
        path.write_bytes(data)
        return header, load_arrays(path, mmap=False)

    def result(t: PayloadHeader, **meta: object) -> PayloadHeader:
        m = {"site": "site-1", "num_examples": 10, "metrics": {}}
        m.update(meta)
        return PayloadHeader("result", job_id, t.task_id, -1, m)

    t1, params = task()
    good = _encode({k: np.asarray(v) for k, v in params.items()}, tmp_path)

    def put(frames: Iterator[pb.Frame], work=stub.Work) -> bool:  # type: ignore[no-untyped-def]
        """A result on a Work stream of its own, all of it at once (without
        waiting for "go", which the server must cope with); True once
        acknowledged."""
        replies = work(frames)
        reply = read_header(replies)
        if reply.kind == "go":
            reply = read_header(replies)
        return reply.kind == "ack"

    # Oversize chunk: one frame beyond the message cap (gRPC refuses it).
    huge = b"\0" * (9 * 1024 * 1024)
    _refused(lambda: put(_frames(result(t1), huge, chunk=len(huge)), big_stub.Work),
             grpc.StatusCode.RESOURCE_EXHAUSTED)  # fmt: skip
    # Announcing far more than a result of this model can be.
    _refused(lambda: put(_frames(result(t1), good, size=1 << 40)), grpc.StatusCode.DATA_LOSS)
    # Truncated: the stream ends without a trailer, then with too few bytes.
    _refused(lambda: put(_frames(result(t1), good[: len(good) // 2], size=len(good),
                                 trailer=False)), grpc.StatusCode.DATA_LOSS)  # fmt: skip
    _refused(lambda: put(_frames(result(t1), good[:-8], size=len(good))),
             grpc.StatusCode.DATA_LOSS)  # fmt: skip
    # Hash mismatch.
    _refused(lambda: put(_frames(result(t1), good, sha="0" * 32)), grpc.StatusCode.DATA_LOSS)
    # A task it was never given; another site's name; a job it is not in.
    fake = PayloadHeader("result", job_id, str(uuid.uuid4()), -1, {"site": "site-1"})
    assert "unknown" in _refused(lambda: put(_frames(fake, good)),
                                 grpc.StatusCode.PERMISSION_DENIED)  # fmt: skip
    assert "site-2" in _refused(lambda: put(_frames(result(t1, site="site-2"), good)),
                                grpc.StatusCode.PERMISSION_DENIED)  # fmt: skip
    other = PayloadHeader("result", str(uuid.uuid4()), t1.task_id, -1, {"site": "site-1"})
    _refused(lambda: put(_frames(other, good)), grpc.StatusCode.NOT_FOUND)

    # None of that was stored, and round 1 still waits for site-1.
    assert fed.round_done(job_id, 1) is None
    assert not [p for p in (run_dir / "results").rglob("*") if "site-1" in p.name]

    # Poisoned results pass the transport (they are well-formed streams) and
    # FedAvg refuses them: the site counts as not answered that round.
    w, b = np.asarray(params["w"]), np.asarray(params["b"])
    poisons = [
        {"w": np.full_like(w, np.nan), "b": b},  # NaN
        {"w": w[:-1], "b": b},  # shape differs
        {"w": w.astype(np.float64), "b": b},  # dtype differs
        {"w": w, "b": b, "extra": np.zeros(2)},  # names differ
        {"w": w, "b": np.full_like(b, np.inf)},  # Inf
    ]
    t = t1
    for k, poison in enumerate(poisons, start=1):
        if k > 1:
            t, params = task()
        data = _encode(poison, tmp_path)
        assert put(_frames(result(t), data))
        # A replay of the same result is refused.
        _refused(lambda t=t, data=data: put(_frames(result(t), data)),
                 grpc.StatusCode.PERMISSION_DENIED)  # fmt: skip
        m = wait_for(lambda k=k: fed.round_done(job_id, k), 120, f"round {k}")
        assert list(m["sites"]) == ["site-2"] and m["missing"] == ["site-1"], m

    # The last round: an honest result is still accepted (the key was not banned).
    t, params = task()
    honest = {"w": np.asarray(params["w"]) + 1, "b": np.asarray(params["b"])}
    assert put(_frames(result(t), _encode(honest, tmp_path)))
    meta = admin.wait_for_job(job_id, timeout=120)
    assert meta["status"] == "FINISHED:COMPLETED", meta
    assert sorted(fed.round_done(job_id, rounds)["sites"]) == ["site-1", "site-2"]

    log = (fed.workspace / "jobs" / job_id / "logs" / "server.log").read_text()
    assert log.count("refused the result of site-1") == len(poisons)
    for path in (run_dir / "models").glob("global_*.safetensors"):
        for name, arr in load_arrays(path, mmap=False).items():
            assert np.isfinite(arr).all(), (path.name, name)
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".partial")]
    session.cancel()
