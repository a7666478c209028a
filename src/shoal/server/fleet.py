"""The Fleet service: what sites and their job workers call. Thin: decode,
check identity, call the server's parts, encode.

It holds only the parts of the server it uses (:class:`FleetParts`), built by
the daemon; a test builds them from fakes.

Served by ``grpc.aio`` on the daemon's Fleet loop (``transport.aio``): every
method is a coroutine, a held call (a site's ``Connect`` stream, a worker's
``Work`` stream waiting for a task) is a suspended coroutine, not a thread.
The threads that change what such a call waits for (the scheduler, a job's
IPC reader, heartbeat expiry) wake it with a
:class:`~shoal.transport.aio.Wakeup`.
Nothing here may block for long: it would hold up every site at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import os
import queue
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from shoal._proto import shoal_pb2 as pb
from shoal.errors import NotFoundError, PeerRejectedError
from shoal.provision.jobcreds import JobCredentialAuthority
from shoal.server.identity import IdentifyAio
from shoal.server.jobrun import DONE, JobRun, Task
from shoal.server.runs import Runs
from shoal.server.sessions import CLOSE, SiteRegistry, SiteSession
from shoal.server.store import JobStore
from shoal.transport import PayloadHeader, frames_from_file
from shoal.transport.aio import StalledError, StallWatch, Ticking, Wakeup
from shoal.transport.channels import aio_rpc_errors
from shoal.transport.frames import (
    WireFrame,
    human_bytes,
    read_header,
    read_header_async,
    receive_to_file_async,
)

__all__ = ["FleetParts", "FleetService"]

log = logging.getLogger(__name__)

#: Longest a worker's "ready" is held before the server answers "none".
MAX_TASK_WAIT_S = 60.0
#: Largest job log a site may upload.
MAX_LOG_BYTES = 256 * 1024 * 1024
#: Stalled transfers a site may leave open (see ``FleetService._end_stalled``)
#: before its new transfers and Work streams are refused.
MAX_STALLED_PER_SITE = 2


class TransferSlots:
    """The daemon's model-transfer slots: ``total`` at once, at most
    ``per_site`` of them held (or waited for) by one site, so no site can
    take them all and stop every other site's transfers.

        slots = TransferSlots(total=8, per_site=2)
        async with slots.hold("site-1"):
            ...  # stream the model
    """

    def __init__(self, *, total: int, per_site: int) -> None:
        self.total = max(1, total)
        self.per_site = max(1, min(per_site, self.total))
        self._free = asyncio.Semaphore(self.total)
        # Keyed by certificate name: no more entries than the project has sites.
        self._sites: dict[str, asyncio.Semaphore] = {}
        #: Transfers waiting for a slot, and holding one (read by the metrics;
        #: changed only on the event loop's thread).
        self.waiting = 0
        self.active = 0

    @contextlib.asynccontextmanager
    async def hold(self, site: str) -> AsyncIterator[None]:
        mine = self._sites.get(site)
        if mine is None:
            mine = self._sites[site] = asyncio.Semaphore(self.per_site)
        # The site's own turn first: a site over its share waits behind its
        # own transfers, never in the queue every site shares.
        self.waiting += 1
        waiting = True
        try:
            async with mine, self._free:
                self.waiting -= 1
                waiting = False
                self.active += 1
                try:
                    yield
                finally:
                    self.active -= 1
        finally:
            if waiting:
                self.waiting -= 1


@dataclass(frozen=True)
class FleetParts:
    """What the Fleet service uses of the server, and nothing more."""

    #: The caller's identity from its certificate; aborts a refused call.
    identify: IdentifyAio
    #: Connected sites: a ``Connect`` stream is a session here.
    registry: SiteRegistry
    #: The running jobs, whose task boards workers read and answer.
    runs: Runs
    #: The job store (``PutBlob`` writes a site's job log beside the job).
    store: JobStore
    #: Issues a job worker its per-job certificate (``FetchJob``).
    job_credentials: JobCredentialAuthority
    #: The server's name, told to each site in its welcome.
    server_name: str
    #: How often sites send a heartbeat, told to each site in its welcome.
    heartbeat_interval_s: float
    #: False once the server is stopping: no new site session is opened then
    #: (the sites already here finish the round in progress).
    accepting: Callable[[], bool] = lambda: True
    #: Told the bytes moved: ``(direction "in"|"out", kind "model"|"job"|"log", bytes)``.
    moved: Callable[[str, str, int], None] = lambda direction, kind, nbytes: None
    #: The project's revocation list (PEM) as the server holds it, or None:
    #: handed to sites with each job, which check its signer against it and
    #: against their own copy.
    crl_pem: Callable[[], bytes | None] = lambda: None


class FleetService:
    """``shoal.v1.Fleet`` for a ``grpc.aio`` server (bound by ``transport.services``)."""

    def __init__(self, parts: FleetParts, *, max_transfers: int, stall_s: float = 30.0) -> None:
        self._parts = parts
        self._identify = parts.identify
        self._registry = parts.registry
        self._runs = parts.runs
        # Model transfers streamed at once; the others wait their turn. Bounds
        # the daemon's memory whatever the number of sites. A quarter each at
        # most: one site that stalls, or never reads, cannot hold them all.
        self._slots = TransferSlots(total=max_transfers, per_site=max(1, max_transfers // 4))
        # A transfer that moves no data for this long loses its slot.
        self._stall_s = stall_s
        # One task transfer per site and job at a time: a worker's second
        # "ready" while its task is still streaming (or stalled) waits for
        # that one instead of taking another slot for the same task.
        self._task_turns: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        # Per site: stalled transfers whose stream is not closed yet (a peer
        # that never reads keeps it open, and the unsent chunk with it).
        self._stalled: collections.Counter[str] = collections.Counter()
        # One per running job, made by the first "ready" for it: a new task
        # wakes every call waiting for one with a single hop onto the loop.
        self._board_wakeups: weakref.WeakKeyDictionary[JobRun, Wakeup] = weakref.WeakKeyDictionary()

    def transfer_load(self) -> tuple[int, int]:
        """Model transfers ``(waiting for a slot, holding one)`` now."""
        return self._slots.waiting, self._slots.active

    # -- the site daemon's session --------------------------------------------

    async def Connect(self, request: pb.Hello, context: grpc.aio.ServicerContext) -> None:
        who = await self._identify(context, expected_type="client")
        if request.site != who.name:
            log.warning(
                "refused %s: certificate of %s tried to register as %r",
                context.peer(),
                who.name,
                request.site,
            )
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"certificate is for {who.name}; cannot register as {request.site!r}",
            )
        if not self._parts.accepting():
            log.info(
                "refused a session of %s from %s: the server is stopping", who.name, context.peer()
            )
            # UNAVAILABLE: the site retries with backoff and finds the server once it is back.
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "the server is stopping; connect again later"
            )
        try:
            resources = json.loads(request.resources_json) if request.resources_json else {}
        except json.JSONDecodeError:
            resources = {}
        session = SiteSession(
            name=who.name,
            org=who.org,
            peer=context.peer(),
            resources=resources,
            serial=who.serial,
            shoal_version=request.shoal_version,
            cert_not_after=who.not_after.isoformat() if who.not_after else None,
        )
        session.running_jobs = list(request.running_jobs)
        self._registry.set_policy(who.name, resources.get("policy"))
        wakeup = Wakeup()
        session.on_event = wakeup.fire
        self._registry.open(session)
        log.info(
            "site %s (org %s) connected from %s, session %s, shoal %s",
            who.name,
            who.org,
            context.peer(),
            session.session_id[:8],
            request.shoal_version or "?",
        )
        try:
            await context.write(
                pb.ServerEvent(
                    welcome=pb.Welcome(
                        session_id=session.session_id,
                        server=self._parts.server_name,
                        heartbeat_interval_s=self._parts.heartbeat_interval_s,
                    )
                )
            )
            while True:
                try:
                    event = session.events.get_nowait()
                except queue.Empty:
                    await wakeup.wait()
                    continue
                if event is CLOSE:
                    return
                await context.write(event)
        finally:
            # However the stream ended: closed by the site, cut, replaced, or
            # cancelled by the server stopping (a no-op if already ended).
            self._registry.end(session, "connection closed")

    async def Beat(self, request: pb.Heartbeat, context: grpc.aio.ServicerContext) -> pb.Ack:
        who = await self._identify(context, expected_type="client")
        if not self._registry.beat(who.name, request.session_id, list(request.running_jobs)):
            # Unknown session (e.g. the server restarted): the site reconnects.
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such session; connect again")
        if request.policy_json:
            try:
                summary = json.loads(request.policy_json)
            except json.JSONDecodeError:
                summary = {"invalid": "the site sent a policy summary that is not JSON"}
            self._registry.set_policy(who.name, summary)
        return pb.Ack(ok=True)

    async def ReportJob(self, request: pb.JobEvent, context: grpc.aio.ServicerContext) -> pb.Ack:
        who = await self._identify(context, expected_type="client")
        run = self._runs.get(request.job_id)
        log.info(
            "site %s: job %s worker %s%s",
            who.name,
            request.job_id,
            request.state,
            f" ({request.detail.splitlines()[-1]})" if request.detail.strip() else "",
        )
        if run is not None:
            run.site_job_event(who.name, request.state, request.detail)
        return pb.Ack(ok=True)

    # -- the job worker ---------------------------------------------------------

    def _run_for(self, site: str, job_id: str) -> JobRun:
        run = self._runs.get(job_id)
        if run is None:
            raise NotFoundError(f"job {job_id} is not running")
        if site not in run.site_set:
            raise PeerRejectedError(f"{site} is not a site of job {job_id}")
        return run

    async def _next_task(self, run: JobRun, site: str, wait_s: float) -> Task | object | None:
        """``run.next_task`` without a thread: wait on the board's Wakeup."""
        wakeup = self._board_wakeups.get(run)
        if wakeup is None:
            wakeup = self._board_wakeups[run] = Wakeup()
            run.on_change(wakeup.fire)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while (task := run.take_task(site)) is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            await wakeup.wait(remaining)
        return task

    async def Work(
        self, request_iterator: AsyncIterator[WireFrame], context: grpc.aio.ServicerContext
    ) -> None:
        """A job worker's stream for its whole job: "ready" is answered with
        its next task, a result with an "ack". One stream, not a call per
        task and result: at 1000 sites a call cost the server about three
        times what a message on an open stream does (grpc.aio, this machine).

        A result too big to ride in its header is announced by the header
        alone and answered with "go" once it has a transfer slot and is
        wanted: only then does the site stream it. Results that waited for a
        slot while streaming sat in gRPC's buffers, so the daemon's memory
        grew with the number of sites uploading at once."""
        who = await self._identify(context, expected_type=("client", "worker"))
        await self._refuse_if_stalled(who.name, context)
        async with aio_rpc_errors(context, f"work stream of {who.name}"):
            try:
                await self._work(who.name, request_iterator, context, bound_job=who.job_id)
            except StalledError as exc:
                await self._end_stalled(who.name, exc, context)

    async def _work(
        self,
        site: str,
        request_iterator: AsyncIterator[WireFrame],
        context: grpc.aio.ServicerContext,
        *,
        bound_job: str | None = None,
    ) -> None:
        while (first := await anext(request_iterator, None)) is not None:
            header = read_header(iter((first,)))
            if bound_job is not None and header.job_id != bound_job:
                # A worker's credential is good for its own job only.
                raise PeerRejectedError(
                    f"credential of {site}'s worker for job {bound_job} "
                    f"cannot act for job {header.job_id}"
                )
            run = self._run_for(site, header.job_id)
            if header.kind == "ready":
                await self._send_task(run, site, header, context)
            elif header.kind == "result":
                if header.inline is None:
                    # A slot, and a watch on it: a site that is told "go" and
                    # sends nothing (or stops) loses the slot after stall_s.
                    watch = StallWatch(self._stall_s, f"result upload from {site}")
                    reply = PayloadHeader(
                        kind="go", job_id=run.job_id, task_id=header.task_id, size=0
                    )
                    info = await run.accept_result(
                        site,
                        header,
                        Ticking(request_iterator, watch),
                        run.max_result_bytes(),
                        go=functools.partial(context.write, pb.Frame(header=reply.to_pb())),
                        transfer=functools.partial(self._transfer, site, watch),
                    )
                else:
                    # Its bytes came inside the header: nothing left to stream.
                    info = await run.accept_result(
                        site, header, request_iterator, run.max_result_bytes()
                    )
                self._parts.moved("in", "model", int(info.get("bytes") or 0))
                ack = PayloadHeader(
                    kind="ack", job_id=run.job_id, task_id=header.task_id, meta=info, size=0
                )
                await context.write(pb.Frame(header=ack.to_pb()))
            else:
                raise PeerRejectedError(f"expected 'ready' or a result, got {header.kind!r}")

    @contextlib.asynccontextmanager
    async def _transfer(self, site: str, watch: StallWatch) -> AsyncIterator[StallWatch]:
        """A transfer slot for ``site``, watched from the moment it is held:
        waiting for a slot is not a stall, holding one idle is."""
        async with self._slots.hold(site), watch:
            yield watch

    async def _refuse_if_stalled(self, site: str, context: grpc.aio.ServicerContext) -> None:
        if (n := self._stalled[site]) >= MAX_STALLED_PER_SITE:
            log.warning("refused a transfer to %s: %d stalled transfers still open", site, n)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{site} has {n} stalled transfers still open (at most "
                f"{MAX_STALLED_PER_SITE}): read or close those streams first",
            )

    async def _end_stalled(
        self, site: str, exc: StalledError, context: grpc.aio.ServicerContext
    ) -> None:
        """End a stream whose transfer stalled (its slot is free already).

        A peer that stopped reading has our last chunk pending in gRPC, and
        the status queues behind it: the stream only closes once the peer
        reads or goes away (keepalive finds a dead one). Until then it counts
        against the site (``MAX_STALLED_PER_SITE``), so a site that never
        reads cannot pile up unsent chunks in the daemon's memory."""
        log.warning("%s", exc)
        self._stalled[site] += 1
        try:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
        finally:
            self._stalled[site] -= 1
            if not self._stalled[site]:
                del self._stalled[site]

    async def _send_task(
        self, run: JobRun, site: str, ready: PayloadHeader, context: grpc.aio.ServicerContext
    ) -> None:
        """Answer a worker's "ready": its task once there is one, "done", or
        "none" when nothing came within the wait it asked for."""
        try:
            wait = min(max(float(ready.meta.get("wait_s", MAX_TASK_WAIT_S)), 0.0), MAX_TASK_WAIT_S)
        except (TypeError, ValueError):
            raise PeerRejectedError("wait_s must be a number") from None
        task = await self._next_task(run, site, wait)
        if isinstance(task, Task) and task.small is None:
            key = (site, run.job_id)
            turn = self._task_turns.get(key)
            if turn is None:
                turn = self._task_turns[key] = asyncio.Lock()
            async with turn:
                # The board may have moved on while this waited its turn.
                task = run.take_task(site)
                if isinstance(task, Task) and task.small is None:
                    await self._refuse_if_stalled(site, context)
                    await self._stream_task(run, site, task, context)
                    return
        if task is None or task is DONE:
            kind = "none" if task is None else "done"
            header = PayloadHeader(kind=kind, job_id=run.job_id, size=0)
            await context.write(pb.Frame(header=header.to_pb()))
            return
        assert isinstance(task, Task) and task.small is not None
        # One message, no file, no transfer slot, no checksum per site: a
        # small model is a header's worth of bytes.
        header = self._task_header(run, site, task)
        inline = header.with_payload(len(task.small), task.small, checksum=task.small_checksum)
        await context.write(pb.Frame(header=inline.to_pb()))
        self._parts.moved("out", "model", len(task.small))

    @staticmethod
    def _task_header(run: JobRun, site: str, task: Task) -> PayloadHeader:
        meta = dict(task.meta)
        meta.update({"task": task.name, "round": task.round, "site": site})
        return PayloadHeader(kind="task", job_id=run.job_id, task_id=task.task_id, meta=meta)

    async def _stream_task(
        self, run: JobRun, site: str, task: Task, context: grpc.aio.ServicerContext
    ) -> None:
        header = self._task_header(run, site, task)
        watch = StallWatch(self._stall_s, f"round {task.round} task of job {run.job_id} to {site}")
        async with self._transfer(site, watch):
            t0 = time.monotonic()
            frames = frames_from_file(header, task.weights_path, checksum=task.checksum)
            with contextlib.closing(frames):  # a stalled send closes the file now, not at GC
                for frame in frames:
                    # A peer that never reads blocks this write (gRPC flow
                    # control) until the watch ends it.
                    await context.write(frame)
                    watch.tick()
        log.info(
            "job %s: sent %s task of round %d to %s: %s in %.3f s",
            run.job_id,
            task.name,
            task.round,
            site,
            human_bytes(task.size),
            time.monotonic() - t0,
        )
        self._parts.moved("out", "model", max(task.size, 0))

    async def FetchJob(
        self, request: pb.FetchJobRequest, context: grpc.aio.ServicerContext
    ) -> None:
        who = await self._identify(context, expected_type="client")
        async with aio_rpc_errors(context, f"FetchJob from {who.name}"):
            run = self._run_for(who.name, request.job_id)
            rec = run.record
            site_index = run.sites.index(who.name)  # once per job and site
            meta = {
                "name": rec.name,
                "sites": list(run.sites),
                "site_index": site_index,
                "num_sites": len(run.sites),
                # Who submitted it, for the site's audit trail (and policy).
                "submitter": rec.submitter,
                "submitter_org": rec.submitter_org,
                "submitter_role": rec.submitter_role,
                # The submitter's signature of the package, which the site
                # checks before it unpacks anything (None: an unsigned job
                # from before signed jobs, which sites refuse).
                "signature": dict(rec.signature) if rec.signature is not None else None,
            }
            crl = self._parts.crl_pem()
            if crl:
                meta["crl"] = crl.decode("ascii", "replace")
            if request.worker_public_key:
                meta["worker_cert"] = self._parts.job_credentials.issue(
                    who, rec.job_id, request.worker_public_key
                ).decode("ascii")
        header = PayloadHeader(kind="job", job_id=rec.job_id, meta=meta)
        for frame in frames_from_file(header, rec.package):
            await context.write(frame)
        self._parts.moved("out", "job", rec.package.stat().st_size)

    async def PutBlob(
        self, request_iterator: AsyncIterator[WireFrame], context: grpc.aio.ServicerContext
    ) -> pb.Ack:
        who = await self._identify(context, expected_type="client")
        async with aio_rpc_errors(context, f"log upload from {who.name}"):
            header = await read_header_async(request_iterator)
            if header.kind != "blob":
                raise PeerRejectedError(f"expected a blob, got {header.kind!r}")
            rec = self._parts.store.get(header.job_id)
            if who.name not in rec.sites:
                raise PeerRejectedError(f"{who.name} is not a site of job {rec.job_id}")
            dest = rec.logs_dir / f"{who.name}.log"
            # A site's log of a job is append-only: the server's copy is the
            # evidence of what the job did there, and a site (or job code that
            # took it over) must not be able to rewrite it afterwards. The
            # upload lands beside it and replaces it only if it starts with
            # every byte already stored; a resumed job's log, appended to on
            # the site, still passes.
            upload = dest.with_name(f".{dest.name}.upload-{uuid.uuid4().hex}")
            try:
                await receive_to_file_async(
                    header, request_iterator, upload, max_size=MAX_LOG_BYTES
                )
                self._parts.moved("in", "log", upload.stat().st_size)
                await asyncio.to_thread(_commit_log, upload, dest)
            finally:
                upload.unlink(missing_ok=True)
            return pb.Ack(ok=True)
        return pb.Ack(ok=False)  # unreachable


#: One log commit at a time: the check and the rename are one step.
_log_commit = threading.Lock()


def _commit_log(upload: Path, dest: Path) -> None:
    """Replace ``dest`` by ``upload`` if ``upload`` starts with all of ``dest``."""
    with _log_commit:
        if dest.exists():
            stored = dest.stat().st_size
            offset = _first_difference(dest, upload, stored)
            if offset is not None:
                raise PeerRejectedError(
                    f"{dest.name} of job {dest.parent.parent.name} is append-only: the upload "
                    f"({upload.stat().st_size} bytes) does not start with the {stored} bytes "
                    f"already stored (they differ from byte {offset}); the stored copy is kept"
                )
        os.replace(upload, dest)


def _first_difference(stored: Path, upload: Path, size: int) -> int | None:
    """The first offset below ``size`` where the two files differ (or ``upload``
    ends), or None if ``upload`` starts with ``size`` bytes equal to ``stored``'s."""
    chunk = 1 << 20
    offset = 0
    with open(stored, "rb") as a, open(upload, "rb") as b:
        while offset < size:
            want = min(chunk, size - offset)
            x, y = a.read(want), b.read(want)
            if x != y:
                same = next(
                    (i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q),
                    min(len(x), len(y)),
                )
                return offset + same
            offset += want
    return None
