"""The Fleet service: what sites and their job workers call. Thin: decode,
check identity, call the daemon, encode."""

from __future__ import annotations

import json
import logging
import queue
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc

from shoal._proto import shoal_pb2 as pb
from shoal._proto import shoal_pb2_grpc as pb_grpc
from shoal.errors import NotFoundError, PeerRejectedError
from shoal.server.jobrun import DONE, JobRun, Task
from shoal.server.sessions import CLOSE, SiteSession
from shoal.transport import PayloadHeader, frames_from_file, read_header, rpc_errors
from shoal.transport.frames import Frame, WireFrame, human_bytes, receive_to_file

if TYPE_CHECKING:
    from shoal.server.daemon import ServerDaemon

__all__ = ["FleetService"]

log = logging.getLogger(__name__)

#: Longest a GetTask call is held before the worker asks again.
MAX_TASK_WAIT_S = 60.0
#: Largest job log a site may upload.
MAX_LOG_BYTES = 256 * 1024 * 1024


class FleetService(pb_grpc.FleetServicer):
    def __init__(self, daemon: ServerDaemon) -> None:
        self.d = daemon

    # -- the site daemon's session --------------------------------------------

    def Connect(self, request: pb.Hello, context: grpc.ServicerContext) -> Iterator[pb.ServerEvent]:
        who = self.d.identify(context, expected_type="client")
        if request.site != who.name:
            log.warning(
                "refused %s: certificate of %s tried to register as %r",
                context.peer(),
                who.name,
                request.site,
            )
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"certificate is for {who.name}; cannot register as {request.site!r}",
            )
        try:
            resources = json.loads(request.resources_json) if request.resources_json else {}
        except json.JSONDecodeError:
            resources = {}
        session = SiteSession(
            name=who.name, org=who.org, peer=context.peer(), resources=resources, serial=who.serial
        )
        session.running_jobs = list(request.running_jobs)
        self.d.registry.open(session)
        log.info(
            "site %s (org %s) connected from %s, session %s, shoal %s",
            who.name,
            who.org,
            context.peer(),
            session.session_id[:8],
            request.shoal_version or "?",
        )
        context.add_callback(lambda: self.d.registry.end(session, "connection closed"))
        yield pb.ServerEvent(
            welcome=pb.Welcome(
                session_id=session.session_id,
                server=self.d.name,
                heartbeat_interval_s=self.d.heartbeat_interval_s,
            )
        )
        while context.is_active():
            try:
                event = session.events.get(timeout=1.0)
            except queue.Empty:
                continue
            if event is CLOSE:
                return
            yield event

    def Beat(self, request: pb.Heartbeat, context: grpc.ServicerContext) -> pb.Ack:
        who = self.d.identify(context, expected_type="client")
        if not self.d.registry.beat(who.name, request.session_id, list(request.running_jobs)):
            # Unknown session (e.g. the server restarted): the site reconnects.
            context.abort(grpc.StatusCode.NOT_FOUND, "no such session; connect again")
        return pb.Ack(ok=True)

    def ReportJob(self, request: pb.JobEvent, context: grpc.ServicerContext) -> pb.Ack:
        who = self.d.identify(context, expected_type="client")
        run = self.d.run_of(request.job_id)
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
        run = self.d.run_of(job_id)
        if run is None:
            raise NotFoundError(f"job {job_id} is not running")
        if site not in run.sites:
            raise PeerRejectedError(f"{site} is not a site of job {job_id}")
        return run

    def GetTask(self, request: pb.TaskRequest, context: grpc.ServicerContext) -> Iterator[Frame]:
        who = self.d.identify(context, expected_type="client")
        with rpc_errors(context, f"GetTask from {who.name}"):
            run = self._run_for(who.name, request.job_id)
        wait = min(max(request.wait_s, 0.0), MAX_TASK_WAIT_S)
        task = run.next_task(who.name, wait)
        if task is None:
            yield pb.Frame(header=PayloadHeader(kind="none", job_id=run.job_id, size=0).to_pb())
            return
        if task is DONE:
            yield pb.Frame(header=PayloadHeader(kind="done", job_id=run.job_id, size=0).to_pb())
            return
        assert isinstance(task, Task)
        meta = dict(task.meta)
        meta.update({"task": task.name, "round": task.round, "site": who.name})
        header = PayloadHeader(kind="task", job_id=run.job_id, task_id=task.task_id, meta=meta)
        with self.d.transfer_slots:
            t0 = time.monotonic()
            yield from frames_from_file(header, task.weights_path, sha256=task.sha256)
        log.info(
            "job %s: sent %s task of round %d to %s: %s in %.3f s",
            run.job_id,
            task.name,
            task.round,
            who.name,
            human_bytes(task.weights_path.stat().st_size),
            time.monotonic() - t0,
        )

    def PutResult(
        self, request_iterator: Iterator[WireFrame], context: grpc.ServicerContext
    ) -> pb.Ack:
        who = self.d.identify(context, expected_type="client")
        with rpc_errors(context, f"result from {who.name}"):
            header = read_header(request_iterator)
            if header.kind != "result":
                raise PeerRejectedError(f"expected a result, got {header.kind!r}")
            run = self._run_for(who.name, header.job_id)
            with self.d.transfer_slots:
                info = run.accept_result(who.name, header, request_iterator, run.max_result_bytes())
            return pb.Ack(ok=True, meta_json=json.dumps(info))
        return pb.Ack(ok=False)  # unreachable: rpc_errors aborted

    def FetchJob(
        self, request: pb.FetchJobRequest, context: grpc.ServicerContext
    ) -> Iterator[Frame]:
        who = self.d.identify(context, expected_type="client")
        with rpc_errors(context, f"FetchJob from {who.name}"):
            run = self._run_for(who.name, request.job_id)
            rec = run.record
            site_index = run.sites.index(who.name)
            meta = {
                "name": rec.name,
                "sites": list(run.sites),
                "site_index": site_index,
                "num_sites": len(run.sites),
            }
        yield from frames_from_file(
            PayloadHeader(kind="job", job_id=rec.job_id, meta=meta), rec.package
        )

    def PutBlob(
        self, request_iterator: Iterator[WireFrame], context: grpc.ServicerContext
    ) -> pb.Ack:
        who = self.d.identify(context, expected_type="client")
        with rpc_errors(context, f"log upload from {who.name}"):
            header = read_header(request_iterator)
            if header.kind != "blob":
                raise PeerRejectedError(f"expected a blob, got {header.kind!r}")
            assert self.d.store is not None
            rec = self.d.store.get(header.job_id)
            if who.name not in rec.sites:
                raise PeerRejectedError(f"{who.name} is not a site of job {rec.job_id}")
            dest = rec.logs_dir / f"{who.name}.log"
            receive_to_file(header, request_iterator, dest, max_size=MAX_LOG_BYTES)
            return pb.Ack(ok=True)
        return pb.Ack(ok=False)  # unreachable
