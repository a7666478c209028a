"""Hosts many sites in one process for bench/scale.py, each from its own kit
(identity is the certificate's CN, so every site needs its own kit).

    python bench/_site_host.py [--daemons] SERVER_ADDRESS KIT_DIR [KIT_DIR ...]   # until stdin closes

By default every site is a :class:`LightSite`: a few coroutines on this
process's one asyncio loop, with its own ``grpc.aio`` mTLS channel, speaking
the site side of the Fleet protocol as ``SiteDaemon`` does: Connect (Welcome,
job starts and aborts, shutdown), Beat at the interval the Welcome asks with
the running jobs, FetchJob (size and checksum checked by shoal's transport
code), ReportJob started / finished / failed / aborted, the job log by
PutBlob, and reconnection with the daemon's backoff and jitter. Its job
worker opens a second channel, as a worker process would, and echoes each
task's model back (a Work stream: "ready", the task, arrays decoded and
re-encoded, the result); it does not unpack the job or run its script. A real site daemon
costs threads per site and a worker process (about 60 MiB and 0.3 s of
start-up) per job: a thousand of them do not fit on one machine next to the
server they are meant to load.

``--daemons``: real ``SiteDaemon`` objects instead (threads, worker processes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
import threading
from pathlib import Path

import grpc

from shoal import __version__
from shoal._proto import shoal_pb2 as pb
from shoal.arrays import arrays_from_bytes, encode_arrays
from shoal.client.daemon import MAX_PACKAGE_BYTES, SiteDaemon, SiteOptions
from shoal.client.worker import _RETRYABLE, MAX_TASK_BYTES
from shoal.errors import ShoalError, TransportError
from shoal.provision import Kit, load_kit
from shoal.server.daemon import local_sys_info
from shoal.transport import PayloadHeader, channel_credentials, from_rpc_error, read_header
from shoal.transport.channels import channel_options
from shoal.transport.frames import (
    INLINE_MAX,
    WireFrame,
    frames_from_bytes,
    frames_from_pieces,
    read_header_async,
    receive_bytes,
    receive_bytes_async,
)
from shoal.transport.services import ServiceStub

log = logging.getLogger("site_host")


async def _frames(call: grpc.aio.UnaryStreamCall) -> list[WireFrame]:
    """A whole (small) payload stream: the transport's readers take plain iterators."""
    return [f async for f in call]


class LightSite:
    """One site as coroutines: ``SiteDaemon``'s protocol, an echoing job worker."""

    def __init__(self, kit: Kit, address: str) -> None:
        self.kit = kit
        self.name = kit.name
        self.address = address
        self.server_name = str(kit.config["server"]["name"])
        self.session_id = ""
        self.running: set[str] = set()  # jobs whose worker has started and not ended
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self._aborted: dict[str, str] = {}
        self._lost = False  # the server forgot our session: reconnect
        self._stopping = False
        self._channel = self._open()
        self._stub = ServiceStub(self._channel, "Fleet")  # type: ignore[arg-type]

    def _open(self) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(
            self.address,
            channel_credentials(self.kit.tls),
            options=channel_options(self.server_name),
        )

    async def run(self) -> None:
        """Stay connected until cancelled or told to exit, as ``SiteDaemon._run``."""
        delay = 0.2
        while True:
            try:
                if await self._session():
                    return
                delay = 0.2
            except grpc.aio.AioRpcError as exc:
                log.info("%s: not connected (%s: %s)", self.name, exc.code().name, exc.details())
            # The daemon's jitter, which spreads a fleet's reconnections.
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, SiteOptions.max_backoff_s)

    async def _session(self) -> bool:
        """One Connect stream; True when the server asks this site to exit."""
        hello = pb.Hello(
            site=self.name,
            shoal_version=__version__,
            resources_json=json.dumps(local_sys_info()),  # POC kits have no resources.json
            running_jobs=sorted(self.running),
        )
        call = self._stub.Connect(hello)
        self._lost = False
        beats: asyncio.Task[None] | None = None
        try:
            async for event in call:
                which = event.WhichOneof("body")
                if which == "welcome":
                    self.session_id = event.welcome.session_id
                    interval = event.welcome.heartbeat_interval_s or 5.0
                    beats = asyncio.create_task(self._beat(interval, call))
                elif which == "start_job":
                    self._start_job(event.start_job)
                elif which == "abort_job":
                    self._abort_job(event.abort_job.job_id, event.abort_job.reason)
                elif which == "shutdown":
                    return event.shutdown.site_should_exit or event.shutdown.restart
        except asyncio.CancelledError:
            if not self._lost:  # cancelled from outside: stopping
                raise
        finally:
            if beats is not None:
                beats.cancel()
            self.session_id = ""
        return False

    async def _beat(self, interval: float, call: grpc.aio.UnaryStreamCall) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self._stub.Beat(
                    pb.Heartbeat(session_id=self.session_id, running_jobs=sorted(self.running)),
                    timeout=10,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    log.info("%s: server no longer knows this session; reconnecting", self.name)
                    self._lost = True
                    call.cancel()
                    return

    # -- jobs -----------------------------------------------------------------

    def _start_job(self, start: pb.StartJob) -> None:
        job = self._jobs.get(start.job_id)
        if job is not None and not job.done():
            return  # worker already running; carrying on
        self._jobs[start.job_id] = asyncio.create_task(self._run_job(start))

    def _abort_job(self, job_id: str, reason: str) -> None:
        job = self._jobs.get(job_id)
        if job is not None and not job.done():
            self._aborted[job_id] = reason
            job.cancel()

    async def _run_job(self, start: pb.StartJob) -> None:
        job_id = start.job_id
        state, detail, what = "failed", "", "FetchJob"
        try:
            await self._fetch_job(start)
            self.running.add(job_id)
            await self._report(job_id, "started", "bench coroutine")
            what = "worker"
            tasks = await self._echo_worker(job_id)
            state, detail = "finished", f"{tasks} tasks echoed"
        except asyncio.CancelledError:
            if self._stopping:
                raise
            state, detail = "aborted", self._aborted.pop(job_id, "")
        except grpc.aio.AioRpcError as exc:
            detail = str(from_rpc_error(exc, what))
        except Exception as exc:  # report it, as the daemon does a failed worker
            detail = f"{type(exc).__name__}: {exc}"
        finally:
            self.running.discard(job_id)
        log_text = f"bench light worker: {state} {detail}\n".encode()
        await self._upload_log(job_id, log_text)
        await self._report(job_id, state, detail)

    async def _fetch_job(self, start: pb.StartJob) -> None:
        """Fetch and check the job package (size, checksum); the light worker needs no unpacking."""
        frames = iter(await _frames(self._stub.FetchJob(pb.FetchJobRequest(job_id=start.job_id))))
        header = read_header(frames)
        receive_bytes(header, frames, max_size=MAX_PACKAGE_BYTES)
        if start.package_sha256 and header.meta.get("name") is None:
            raise ShoalError("job package header lacks the job name")

    async def _echo_worker(self, job_id: str) -> int:
        """The job worker: its own channel and Work stream, "ready" answered
        with a task, each model echoed back as the result and acknowledged."""
        ready = pb.Frame(
            header=PayloadHeader(kind="ready", job_id=job_id, size=0, meta={"wait_s": 30.0}).to_pb()
        )
        tasks, delay = 0, 0.2
        async with self._open() as channel:
            stub = ServiceStub(channel, "Fleet")  # type: ignore[arg-type]
            call = None
            while True:
                try:
                    if call is None:
                        call = stub.Work()
                        replies = aiter(call)
                    await call.write(ready)
                    header = await read_header_async(replies)
                    if header.kind == "none":
                        continue
                    if header.kind == "done":
                        await call.done_writing()
                        return tasks
                    if header.kind != "task":
                        raise TransportError(f"unexpected reply {header.kind!r} to 'ready'")
                    params = arrays_from_bytes(
                        await receive_bytes_async(header, replies, max_size=MAX_TASK_BYTES)
                    )
                    encoded = encode_arrays(params)
                    result = PayloadHeader(
                        kind="result",
                        job_id=job_id,
                        task_id=header.task_id,
                        meta={"site": self.name, "num_examples": 10, "metrics": {"loss": 0.0}},
                    )
                    for i, frame in enumerate(
                        frames_from_pieces(result, encoded.size, encoded.pieces)
                    ):
                        await call.write(frame)
                        if i == 0 and encoded.size > INLINE_MAX:
                            # Announced by its header alone: stream it on "go".
                            go = await read_header_async(replies)
                            if go.kind != "go":
                                raise TransportError(f"unexpected reply {go.kind!r} to a result")
                    ack = await read_header_async(replies)
                    if ack.kind != "ack":
                        raise TransportError(f"unexpected reply {ack.kind!r} to a result")
                    tasks += 1
                except grpc.aio.AioRpcError as exc:
                    call = None
                    # A stale result (the server moved on) is dropped, as
                    # GrpcBackend does; the server restarting or busy: retry.
                    if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
                        continue
                    if exc.code() not in _RETRYABLE:
                        raise
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 5.0)

    async def _report(self, job_id: str, state: str, detail: str) -> None:
        event = pb.JobEvent(session_id=self.session_id, job_id=job_id, state=state, detail=detail)
        try:
            await self._stub.ReportJob(event, timeout=10)
        except grpc.aio.AioRpcError as exc:
            log.warning("%s: job %s: could not report %s: %s", self.name, job_id, state, exc)

    async def _upload_log(self, job_id: str, text: bytes) -> None:
        header = PayloadHeader(kind="blob", job_id=job_id, meta={"name": "log"})
        try:
            await self._stub.PutBlob(iter(list(frames_from_bytes(header, text))), timeout=60)
        except grpc.aio.AioRpcError as exc:
            log.warning("%s: job %s: could not upload the job log: %s", self.name, job_id, exc)

    async def stop(self, session: asyncio.Task[None]) -> None:
        self._stopping = True
        tasks = [session, *self._jobs.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._channel.close()


async def _serve_light(address: str, kits: list[str]) -> None:
    sites = [LightSite(load_kit(Path(k), expected_type="client"), address) for k in kits]
    sessions = [asyncio.create_task(s.run()) for s in sites]
    print("started", len(sites), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await asyncio.gather(*(s.stop(t) for s, t in zip(sites, sessions, strict=True)))


def _serve_daemons(address: str, kits: list[str]) -> None:
    # Hundreds of threads per process: keep their stacks small.
    threading.stack_size(512 * 1024)
    daemons = []
    for k in kits:
        d = SiteDaemon(
            load_kit(Path(k), expected_type="client"), SiteOptions(server_address=address)
        )
        d.start()
        daemons.append(d)
    print("started", len(daemons), flush=True)
    sys.stdin.read()
    for d in daemons:
        d.request_stop()
    for d in daemons:
        d.stop()


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    args = sys.argv[1:]
    if args[:1] == ["--daemons"]:
        _serve_daemons(args[1], args[2:])
    else:
        asyncio.run(_serve_light(args[0], args[1:]))


if __name__ == "__main__":
    main()
