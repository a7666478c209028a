"""The Admin service: commands from admin users, authorized by certificate role.

Thin like the Fleet service: the servicer decodes, checks identity and role
(``authz``), calls a handler here, and encodes. Every handler returns plain
JSON-able data.

It holds only the parts of the server it uses (:class:`AdminParts`), built by
the daemon; a test builds them from a job store in a temporary folder and a
fake ``identify``:

    admin = AdminService(AdminParts(identify=..., store=JobStore(tmp), ...))
    admin.list_jobs(who, {"limit": 5})
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from shoal import audit as audit_trail
from shoal import checksum, evalmatrix, jobstatus
from shoal._proto import shoal_pb2 as pb
from shoal._proto import shoal_pb2_grpc as pb_grpc
from shoal.client.policy import JobFacts, Principal, SitePolicy
from shoal.errors import ConfigError, JobValidationError, NotFoundError, UnavailableError
from shoal.jobs import MAX_ARCHIVE_BYTES, find_job_root, load_job_spec, safe_extract
from shoal.jobs.signature import JobSignature, verify_job_signature
from shoal.provision import Identity
from shoal.server.authz import authorize, can_see
from shoal.server.identity import Identify
from shoal.server.runs import Runs
from shoal.server.sessions import SiteRegistry
from shoal.server.store import JobRecord, JobStore, quota_message, utc_now
from shoal.transport import PayloadHeader, frames_from_file, read_header, rpc_errors
from shoal.transport.frames import Frame, WireFrame, receive_to_file

__all__ = ["AdminParts", "AdminService", "StopServer"]

log = logging.getLogger(__name__)


class StopServer(Protocol):
    """Ask the server to stop (or restart); it stops after the reply is sent."""

    def __call__(self, *, restart: bool = False) -> None: ...


@dataclass(frozen=True)
class AdminParts:
    """What the Admin service uses of the server, and nothing more."""

    #: The caller's identity from its certificate; aborts a refused call.
    identify: Identify
    #: The job store.
    store: JobStore
    #: Connected sites (``sys_info``, ``shutdown``, ``delete_job`` reach them).
    registry: SiteRegistry
    #: The running jobs (``abort_job``, ``show_stats``).
    runs: Runs
    #: The server's and every site's status, as a project admin sees it.
    status: Callable[[], dict[str, Any]]
    #: The server host's facts for ``sys_info``.
    sys_info: Callable[[], dict[str, Any]]
    #: Stop or restart the server.
    request_stop: StopServer
    #: Tell the scheduler a job is waiting.
    wake_scheduler: Callable[[], None]
    #: The project's site names now (a site added later counts once it has
    #: connected): a job may name no other.
    project_sites: Callable[[], Sequence[str]]
    #: Stored job bytes one submitter may hold.
    submitter_quota_bytes: int
    #: The project CA (PEM): a job's signature must chain to it (the sites
    #: check it again; the server refuses a bad one before storing the job).
    ca_pem: bytes
    #: True once the server is stopping: no new job is taken then.
    stopping: Callable[[], bool] = lambda: False
    #: The server's audit trail: every command is recorded there with the
    #: caller's certificate identity and its outcome; ``audit`` reads it.
    audit: audit_trail.AuditTrail | None = None


#: Commands that change nothing: recorded without an fsync each (a console
#: polling ``get_job_meta`` would otherwise flush the disk twice a second).
_READ_ONLY = {
    "check_status",
    "sys_info",
    "list_jobs",
    "get_job_meta",
    "show_stats",
    "show_errors",
    "get_log",
    "download_job",
    "audit",
}
#: The most events one ``audit`` call returns.
MAX_AUDIT_EVENTS = 1000


class AdminService(pb_grpc.AdminServicer):
    def __init__(self, parts: AdminParts) -> None:
        self._parts = parts
        self._store = parts.store
        self._registry = parts.registry
        self._runs = parts.runs
        self._handlers: dict[str, Callable[[Identity, dict[str, Any]], Any]] = {
            "check_status": self.check_status,
            "sys_info": self.sys_info,
            "list_jobs": self.list_jobs,
            "get_job_meta": self.get_job_meta,
            "abort_job": self.abort_job,
            "clone_job": self.clone_job,
            "delete_job": self.delete_job,
            "show_stats": self.show_stats,
            "show_errors": self.show_errors,
            "get_log": self.get_log,
            "shutdown": self.shutdown,
            "restart": self.restart,
            "audit": self.audit,
        }

    # -- servicer ---------------------------------------------------------------

    def Call(self, request: pb.AdminRequest, context: grpc.ServicerContext) -> pb.AdminReply:
        who = self._parts.identify(context, expected_type="admin")
        with (
            rpc_errors(context, f"{request.command} from {who.name}"),
            self._audited(who, request.command) as note,
        ):
            handler = self._handlers.get(request.command)
            if handler is None:
                raise ConfigError(
                    f"unknown command {request.command!r}; known: {', '.join(sorted(self._handlers))}"
                )
            try:
                args = json.loads(request.args_json) if request.args_json else {}
            except json.JSONDecodeError as exc:
                raise ConfigError(f"arguments are not JSON: {exc}") from None
            if not isinstance(args, dict):
                raise ConfigError("arguments must be a JSON object")
            # A clone's signature (a certificate and all) would swell every
            # line; the job's SUBMITTED event names its signer.
            note["args"] = {k: v for k, v in args.items() if k != "signature"}
            result = handler(who, args)
            return pb.AdminReply(ok=True, result_json=json.dumps(result))
        return pb.AdminReply(ok=False)  # unreachable: rpc_errors aborted

    def Submit(
        self, request_iterator: Iterator[WireFrame], context: grpc.ServicerContext
    ) -> pb.AdminReply:
        who = self._parts.identify(context, expected_type="admin")
        with (
            rpc_errors(context, f"submit_job from {who.name}"),
            self._audited(who, "submit_job") as note,
        ):
            authorize(who, "submit_job")
            header = read_header(request_iterator)
            if header.kind != "job":
                raise JobValidationError(f"expected a job archive, got {header.kind!r}")
            note["args"] = {"size": header.size}
            job_id = self.submit(who, header, request_iterator)
            note["job_id"] = job_id
            return pb.AdminReply(ok=True, result_json=json.dumps({"job_id": job_id}))
        return pb.AdminReply(ok=False)

    def Download(self, request: pb.AdminRequest, context: grpc.ServicerContext) -> Iterator[Frame]:
        who = self._parts.identify(context, expected_type="admin")
        tmp: Path | None = None
        with (
            rpc_errors(context, f"download_job from {who.name}"),
            self._audited(who, "download_job") as note,
        ):
            args = json.loads(request.args_json or "{}")
            note["args"] = args
            rec = self._job(args)
            authorize(who, "download_job", job=rec)
            tmp = self._pack_results(rec)
        assert tmp is not None
        try:
            header = PayloadHeader(kind="download", job_id=rec.job_id, meta={"name": rec.name})
            yield from frames_from_file(header, tmp)
        finally:
            tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _audited(self, who: Identity, command: str) -> Iterator[dict[str, Any]]:
        """Record ``command`` with the caller's identity and how it ended.

        The one place every admin call passes; the body fills the dict with
        what it learns (the arguments, a new job's id). A refusal or error is
        recorded with its type and message and raised on unchanged.
        """
        note: dict[str, Any] = {}
        trail = self._parts.audit
        try:
            yield note
        except BaseException as exc:
            if trail is not None:
                trail.record(
                    "admin.command",
                    command=command,
                    caller=who.name,
                    org=who.org,
                    role=who.role or "member",
                    outcome=f"{type(exc).__name__}: {exc}",
                    **note,
                )
            raise
        if trail is not None:
            trail.record(
                "admin.command",
                durable=command not in _READ_ONLY,
                command=command,
                caller=who.name,
                org=who.org,
                role=who.role or "member",
                outcome="ok",
                **note,
            )

    # -- jobs -------------------------------------------------------------------

    def _job(self, args: dict[str, Any]) -> JobRecord:
        job_id = args.get("job_id")
        if not isinstance(job_id, str) or not job_id:
            raise ConfigError("job_id is required")
        return self._store.find(job_id)

    def _signature(self, who: Identity, data: object) -> JobSignature:
        """The shape of a job's signature, before anything is received."""
        if data is None:
            raise JobValidationError(
                "job is not signed: sites run only jobs signed by their submitter; "
                "submit it with shoal's admin tools (AdminSession signs with the kit's key)"
            )
        sig = JobSignature.from_json(data)
        if sig.submitter != who.name:
            raise JobValidationError(
                f"job signature: names {sig.submitter!r} as submitter, but {who.name} is submitting"
            )
        return sig

    def _check_signature(self, who: Identity, sig: JobSignature, archive_sha256: str) -> None:
        """What every site will check (but revocation: a revoked caller never
        gets this far), so that a job no site would run is refused now."""
        verify_job_signature(
            sig.to_json(),
            ca_pem=self._parts.ca_pem,
            job_id=sig.job_id,
            archive_sha256=archive_sha256,
            submitter=who.name,
            submitter_org=who.org,
        )

    def submit(self, who: Identity, header: PayloadHeader, frames: Iterator[Any]) -> str:
        """Receive, check and store a job archive; nothing is stored on refusal.

        The job must carry its submitter's signature (``meta["signature"]``,
        ``shoal.jobs.signature``) of exactly the archive received; the job
        takes the id it names.

        The submitter's quota of stored job bytes (archive + unpacked copy,
        ``AdminParts.submitter_quota_bytes``) is checked on the announced
        size before anything is received, and exactly when the job is stored.
        """
        store = self._store
        if self._parts.stopping():
            raise UnavailableError("the server is stopping: submit the job again once it is back")
        if header.size > MAX_ARCHIVE_BYTES:
            # Refuse on the announced size, before a byte is stored.
            raise JobValidationError(
                f"job archive is {header.size} bytes, more than the "
                f"{MAX_ARCHIVE_BYTES}-byte limit ({MAX_ARCHIVE_BYTES // 2**20} MiB)"
            )
        quota = self._parts.submitter_quota_bytes
        used = store.submitter_bytes(who.name)
        if used + header.size > quota:
            raise JobValidationError(quota_message(who.name, quota, used, header.size))
        sig = self._signature(who, header.meta.get("signature"))
        staging = store.staging_folder(sig.job_id)
        try:
            payload = receive_to_file(
                header, frames, staging / "job.zip", max_size=MAX_ARCHIVE_BYTES
            )
            # Its identity in the job store (the transfer's checksum is none).
            package_sha256 = checksum.of_file(payload.path, "sha256")
            self._check_signature(who, sig, package_sha256)
            try:
                safe_extract(payload.path, staging / "job")
            except zipfile.BadZipFile as exc:
                raise JobValidationError(f"not a zip archive: {exc}") from None
            spec = load_job_spec(find_job_root(staging / "job"))
            spec.check_sites(self._parts.project_sites())
            self._check_site_policies(
                who,
                sites=spec.sites,
                min_clients=spec.min_clients,
                workflow=spec.workflow.name,
                code_sha256=package_sha256,
            )
            num_rounds = spec.workflow.params.get("num_rounds")
            rec = store.create(
                name=spec.name,
                spec=spec.to_dict(),
                staged_folder=staging,
                submitter=who.name,
                submitter_org=who.org,
                submitter_role=who.role or "member",
                package_sha256=package_sha256,
                package_size=payload.size,
                num_rounds=int(num_rounds) if isinstance(num_rounds, int) else None,
                quota_bytes=quota,
                signature=sig.to_json(),
            )
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("job %s (%s) submitted by %s", rec.job_id, rec.name, who.name)
        self._parts.wake_scheduler()
        return rec.job_id

    def _check_site_policies(
        self,
        who: Identity,
        *,
        sites: Sequence[str] | None,
        min_clients: int,
        workflow: str,
        code_sha256: str,
    ) -> None:
        """Refuse a job fewer than ``min_clients`` of its sites would accept,
        by the policy summaries they published (``SiteRegistry.policies``).

        A site that published none (not connected since the server started)
        is counted as accepting: it decides when the job reaches it. What the
        server cannot know (the job's signer, the site's own filters, how
        busy it will be) is left to the site too.
        """
        targets = list(sites) if sites is not None else list(self._parts.project_sites())
        published = self._registry.policies()
        facts = JobFacts(
            submitter=Principal(name=who.name, org=who.org, role=who.role or "member"),
            code_sha256=code_sha256,
            workflow=workflow,
        )
        refusals: dict[str, str] = {}
        for site in targets:
            summary = published.get(site)
            if summary is None:
                continue
            if summary.get("invalid"):
                refusals[site] = f"its policy file is invalid ({summary['invalid']})"
                continue
            try:
                policy = SitePolicy.from_summary(summary)
            except ConfigError as exc:
                log.warning("site %s published a policy summary shoal cannot read: %s", site, exc)
                continue
            reason = policy.refusal(facts)
            if reason:
                refusals[site] = reason
        accepting = len(targets) - len(refusals)
        if refusals and accepting < min_clients:
            why = "; ".join(f"{site}: {reason}" for site, reason in sorted(refusals.items()))
            raise JobValidationError(
                f"job refused: it needs {min_clients} site(s) and only {accepting} of "
                f"{len(targets)} would accept it; refused by the policy of {why}"
            )

    def list_jobs(self, who: Identity, args: dict[str, Any]) -> list[dict[str, Any]]:
        limit = args.get("limit")
        recs = [
            r
            for r in self._store.list(
                status=args.get("status") or None, name=args.get("name") or None
            )
            if can_see(who, r)
        ]
        # The limit counts the jobs this admin sees (the latest ones), so it
        # applies after the filter.
        if limit:
            recs = recs[-int(limit) :]
        return [_with_privacy(r.summary(), r.run_dir) for r in recs]

    def get_job_meta(self, who: Identity, args: dict[str, Any]) -> dict[str, Any]:
        rec = self._job(args)
        authorize(who, "get_job_meta", job=rec)
        out = _with_privacy(rec.summary(), rec.run_dir)
        out["spec"] = rec.spec
        # What a clone's submitter signs, and the signature it checks first.
        out["package_sha256"] = rec.package_sha256
        out["signature"] = dict(rec.signature) if rec.signature is not None else None
        out["results"] = (
            sorted(str(p.relative_to(rec.run_dir)) for p in (rec.run_dir / "models").glob("*"))
            if (rec.run_dir / "models").is_dir()
            else []
        )
        return out

    def abort_job(self, who: Identity, args: dict[str, Any]) -> dict[str, Any]:
        rec = self._job(args)
        authorize(who, "abort_job", job=rec)
        if jobstatus.is_finished(rec.status):
            raise ConfigError(f"job {rec.job_id} already finished ({rec.status})")
        run = self._runs.get(rec.job_id)
        if run is not None:
            run.abort(f"aborted by {who.name}")
            # The watcher records ABORTED once the process group is gone.
            for _ in range(100):
                if run.ended and rec.job_id not in self._runs:
                    break
                time.sleep(0.1)
        else:
            self._store.update(
                rec.job_id,
                status=jobstatus.ABORTED,
                end_time=utc_now(),
                error=f"aborted by {who.name} before it started",
            )
        log.info("job %s aborted by %s", rec.job_id, who.name)
        return self._store.get(rec.job_id).summary()

    def clone_job(self, who: Identity, args: dict[str, Any]) -> dict[str, Any]:
        """A copy of a job for the caller, who signs its archive anew
        (``args["signature"]``, over the stored ``package_sha256``)."""
        rec = self._job(args)
        authorize(who, "clone_job", job=rec)
        sig = self._signature(who, args.get("signature"))
        self._check_signature(who, sig, rec.package_sha256)
        # The clone is the cloner's job: the sites judge its submitter anew.
        workflow = rec.spec.get("workflow") or {}
        sites = rec.spec.get("sites")
        self._check_site_policies(
            who,
            sites=list(sites) if isinstance(sites, list) else None,
            min_clients=int(rec.spec.get("min_clients") or 1),
            workflow=str(workflow.get("name") or "") if isinstance(workflow, dict) else "",
            code_sha256=rec.package_sha256,
        )
        store = self._store
        staging = store.staging_folder(sig.job_id)
        try:
            shutil.copy2(rec.package, staging / "job.zip")
            shutil.copytree(rec.job_dir, staging / "job", symlinks=True)
            new = store.create(
                name=rec.name,
                spec=rec.spec,
                staged_folder=staging,
                submitter=who.name,
                submitter_org=who.org,
                submitter_role=who.role or "member",
                package_sha256=rec.package_sha256,
                package_size=rec.package_size,
                num_rounds=rec.num_rounds,
                # A clone is stored again, for the admin who cloned it.
                quota_bytes=self._parts.submitter_quota_bytes,
                signature=sig.to_json(),
            )
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._parts.wake_scheduler()
        return {"job_id": new.job_id}

    def delete_job(self, who: Identity, args: dict[str, Any]) -> dict[str, Any]:
        rec = self._job(args)
        authorize(who, "delete_job", job=rec)
        if not jobstatus.is_finished(rec.status):
            raise ConfigError(f"job {rec.job_id} is {rec.status}; abort it before deleting")
        self._store.delete(rec.job_id)
        # The sites that ran it drop their copy (code, data, models) too; one
        # offline now never hears of it, and its age rule removes the folder.
        forget = pb.ServerEvent(forget_job=pb.ForgetJob(job_id=rec.job_id))
        told = []
        for site in rec.sites:
            session = self._registry.get(site)
            if session is not None:
                session.push(forget)
                told.append(site)
        log.info(
            "job %s deleted by %s; sites told to forget it: %s",
            rec.job_id,
            who.name,
            ", ".join(told) or "none connected",
        )
        return {"job_id": rec.job_id, "sites_told": told}

    def show_stats(self, who: Identity, args: dict[str, Any]) -> dict[str, Any]:
        rec = self._job(args)
        authorize(who, "show_stats", job=rec)
        run = self._runs.get(rec.job_id)
        metrics = _read_metrics(rec.run_dir / "metrics.jsonl")
        stats = {
            "job_id": rec.job_id,
            "status": rec.status,
            "current_round": (run.progress.get("round") if run else None) or rec.current_round,
            "num_rounds": rec.num_rounds,
            "sites": dict(run.site_states) if run else {},
            "progress": dict(run.progress) if run else {},
            "metrics": metrics,
        }
        try:
            matrix = evalmatrix.read_matrix(rec.run_dir / evalmatrix.FILE_NAME)
        except ValueError as exc:
            log.warning(
                "job %s: %s left out of show_stats: %s", rec.job_id, evalmatrix.FILE_NAME, exc
            )
            matrix = None
        if matrix is not None:
            stats["cross_site_eval"] = matrix
        return stats

    def show_errors(self, who: Identity, args: dict[str, Any]) -> dict[str, Any]:
        rec = self._job(args)
        authorize(who, "show_errors", job=rec)
        out: dict[str, Any] = {}
        if rec.error:
            out["job"] = [rec.error]
        if rec.logs_dir.is_dir():
            for log_file in sorted(rec.logs_dir.glob("*.log")):
                lines = _error_lines(log_file)
                if lines:
                    out[log_file.stem] = lines
        return out

    def get_log(self, who: Identity, args: dict[str, Any]) -> dict[str, Any]:
        rec = self._job(args)
        authorize(who, "get_log", job=rec)
        target = str(args.get("target") or "server")
        if "/" in target or target.startswith("."):
            raise ConfigError(f"bad log target {target!r}")
        path = rec.logs_dir / f"{target}.log"
        if not path.is_file():
            available = (
                sorted(p.stem for p in rec.logs_dir.glob("*.log")) if rec.logs_dir.is_dir() else []
            )
            raise NotFoundError(
                f"no {target} log for job {rec.job_id} (available: {', '.join(available) or 'none'})"
            )
        text = path.read_text(errors="replace")
        tail = args.get("tail")
        if tail:
            text = "\n".join(text.splitlines()[-int(tail) :]) + "\n"
        return {"job_id": rec.job_id, "target": target, "log": text}

    # -- system -----------------------------------------------------------------

    def check_status(self, who: Identity, args: dict[str, Any]) -> dict[str, Any]:
        status = self._parts.status()
        if (who.role or "member") == "project_admin":
            return status
        # Running jobs are listed as list_jobs would list them: only those
        # this admin may see.
        store = self._store
        seen: dict[str, bool] = {}

        def visible(job_ids: list[str]) -> list[str]:
            for job_id in job_ids:
                if job_id not in seen:
                    try:
                        seen[job_id] = can_see(who, store.get(job_id))
                    except NotFoundError:
                        seen[job_id] = False
            return [j for j in job_ids if seen[j]]

        server = status["server"]
        server["running_jobs"] = visible(list(server.get("running_jobs") or []))
        for site in status["sites"]:
            site["running_jobs"] = visible(list(site.get("running_jobs") or []))
        return status

    def sys_info(self, who: Identity, args: dict[str, Any]) -> dict[str, Any]:
        target = str(args.get("target") or "server")
        # Checked for the server first: a role with no sys_info at all learns
        # nothing, not even whether a site is connected.
        authorize(who, "sys_info")
        if target == "server":
            return {"target": "server", **self._parts.sys_info()}
        session = self._registry.get(target)
        if session is None:
            raise NotFoundError(f"site {target} is not connected")
        authorize(who, "sys_info", target_org=session.org)
        return {"target": target, **session.resources}

    def shutdown(self, who: Identity, args: dict[str, Any]) -> dict[str, Any]:
        return self._stop(who, "shutdown", str(args.get("target") or "server"), restart=False)

    def restart(self, who: Identity, args: dict[str, Any]) -> dict[str, Any]:
        return self._stop(who, "restart", str(args.get("target") or "server"), restart=True)

    def _stop(self, who: Identity, command: str, target: str, *, restart: bool) -> dict[str, Any]:
        """Stop or restart the server, one site, or ``all`` (every site, then the server)."""
        if target in ("server", "all"):
            authorize(who, command)
            sites = self._registry.connected() if target == "all" else []
        else:
            session = self._registry.get(target)
            if session is None:
                raise NotFoundError(f"site {target} is not connected")
            authorize(who, command, target_org=session.org)
            sites = [target]
        event = pb.ServerEvent(
            shutdown=pb.Shutdown(
                reason=f"{command} by {who.name}", site_should_exit=not restart, restart=restart
            )
        )
        for site in sites:
            session = self._registry.get(site)
            if session is not None:
                session.push(event)
        with_server = target in ("server", "all")
        if with_server:
            log.info("%s of the server requested by %s", command, who.name)
            # Reply first, then stop: the admin gets its answer.
            threading.Timer(0.3, self._parts.request_stop, kwargs={"restart": restart}).start()
        return {"targets": sites + (["server"] if with_server else [])}

    def audit(self, who: Identity, args: dict[str, Any]) -> dict[str, Any]:
        """The server's audit events (project admins only): the last ``limit``,
        at or after ``since``, naming ``site`` or of ``event``; ``verify``:
        walk the whole chain first."""
        authorize(who, "audit")
        trail = self._parts.audit
        if trail is None:
            raise NotFoundError("this server keeps no audit trail")
        limit = args.get("limit") or 100
        if not isinstance(limit, int) or not 0 < limit <= MAX_AUDIT_EVENTS:
            raise ConfigError(f"limit must be 1 to {MAX_AUDIT_EVENTS}, got {limit!r}")
        match = {}
        for key in ("site", "event", "job_id", "caller"):
            if args.get(key):
                match[key] = str(args[key])
        since = args.get("since") or None
        # A site's own events name it in ``site``; a job's, in ``sites``.
        site = match.pop("site", None)
        events = audit_trail.read_events(
            trail.path,
            since=str(since) if since else None,
            limit=limit,
            match=match,
            where=(lambda e: e.get("site") == site or site in (e.get("sites") or []))
            if site
            else None,
        )
        out: dict[str, Any] = {"path": str(trail.path), "head": str(trail.head), "events": events}
        if args.get("verify"):
            report = audit_trail.verify_trail(trail.path)
            out["verify"] = {"ok": report.ok, "lines": report.lines, "problem": report.problem}
        return out

    # -- results ------------------------------------------------------------------

    def _pack_results(self, rec: JobRecord) -> Path:
        """Zip the job's results: models, metrics, TensorBoard files, logs, definition."""
        fd, name = tempfile.mkstemp(prefix=".download-", suffix=".zip", dir=rec.folder)
        path = Path(name)
        os.close(fd)
        try:
            with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.writestr("meta.json", json.dumps({**rec.summary(), "spec": rec.spec}, indent=2))
                for sub in ("run", "logs", "job"):
                    base = rec.folder / sub
                    if not base.is_dir():
                        continue
                    for f in sorted(base.rglob("*")):
                        rel = f.relative_to(rec.folder)
                        # Per-site raw results and partial files stay on the server.
                        if not f.is_file() or f.is_symlink() or rel.parts[:2] == ("run", "results"):
                            continue
                        if f.name.startswith("."):
                            continue
                        stored = f.suffix in (".safetensors", ".keras", ".zip", ".h5")
                        zf.write(
                            f,
                            rel.as_posix(),
                            compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED,
                        )
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path


#: How much of the end of metrics.jsonl list_jobs reads for the last round.
_TAIL_BYTES = 64 * 1024


def _with_privacy(summary: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """``summary`` with the job's ε so far (``dp_epsilon`` of its last
    round's server metrics, central DP-FedAvg's) when it has one: read from
    the end of ``metrics.jsonl`` only, so a long job costs list_jobs no more."""
    path = run_dir / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _TAIL_BYTES))
            tail = f.read().splitlines()
    except OSError:
        return summary
    for raw in reversed(tail):
        try:
            line = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # a line cut by the tail's start, or torn
        server = line.get("server") if isinstance(line, dict) else None
        eps = server.get("dp_epsilon") if isinstance(server, dict) else None
        if isinstance(eps, (int, float)) and not isinstance(eps, bool):
            summary["dp_epsilon"] = float(eps)
        break
    return summary


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _error_lines(path: Path, limit: int = 50) -> list[str]:
    lines = path.read_text(errors="replace").splitlines()
    picked: list[str] = []
    for i, line in enumerate(lines):
        if " - ERROR - " in line or line.startswith("Traceback") or "Error:" in line:
            picked.append(line)
        if line.startswith("Traceback"):
            picked.extend(lines[i + 1 : i + 30])
    return picked[-limit:]
