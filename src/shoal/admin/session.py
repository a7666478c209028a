"""The Python admin API: one session object that the console and CLI wrap.

    from shoal.admin import AdminSession

    with AdminSession.from_kit("workspace/example_project/prod_00/admin@nvidia.com") as s:
        job_id = s.submit_job("hello-tf2")
        meta = s.wait_for_job(job_id, timeout=600)
        print(meta.status, [job.name for job in s.list_jobs()])
        s.download_job(job_id)

Identity and role come from the kit's certificate; the server decides what
this user may do. Every job submitted or cloned is signed here with the
kit's key (``shoal.jobs.signature``): sites run nothing else. Answers are typed values from :mod:`shoal.admin.results`,
decoded here, where the server's JSON arrives.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from shoal import checksum, jobstatus
from shoal._proto import shoal_pb2 as pb
from shoal.admin.results import (
    AuditEvents,
    FederationStatus,
    JobErrors,
    JobMeta,
    JobStats,
    JobSummary,
    SysInfo,
    jobs_from_json,
    reply_field,
)
from shoal.errors import ConfigError, JobValidationError, TransportError
from shoal.jobs import check_archive_size, pack_job
from shoal.jobs.signature import new_job_id, sign_job, verify_job_signature
from shoal.provision import Kit, load_kit
from shoal.provision.expiry import expiry_warnings
from shoal.transport import (
    PayloadHeader,
    frames_from_file,
    from_rpc_error,
    open_channel,
    read_header,
    receive_to_file,
)
from shoal.transport.services import ServiceStub

__all__ = ["AdminSession"]

#: Largest download accepted (a job's results with a large model).
MAX_DOWNLOAD_BYTES = 256 * 1024**3


class AdminSession:
    def __init__(
        self, kit: Kit, *, server_address: str | None = None, timeout: float = 30.0
    ) -> None:
        if kit.type != "admin":
            raise ConfigError(f"{kit.root}: not an admin kit (type {kit.type})")
        self.kit = kit
        server = kit.config["server"]
        self.user = kit.name
        self.role = kit.role or "member"
        self.server_name = str(server["name"])
        import os

        host = os.environ.get("SHOAL_SERVER_HOST") or server.get("host") or server["name"]
        self.server_address = (
            server_address
            or os.environ.get("SHOAL_ADMIN_ADDRESS")
            or f"{host}:{server['admin_port']}"
        )
        self.timeout = timeout
        self.session_id = str(uuid.uuid4())
        #: This admin's certificate or the project CA ends within 30 days.
        self.certificate_warnings = expiry_warnings(kit.tls, kit.name)
        self._channel = open_channel(self.server_address, kit.tls, server_name=self.server_name)
        self._stub = ServiceStub(self._channel, "Admin")
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            self._channel.close()
            raise TransportError(
                f"cannot reach server {self.server_name} at {self.server_address} "
                f"within {timeout:.0f} s (is it running? is the address right?)"
            ) from None

    @classmethod
    def from_kit(
        cls, kit_dir: str | Path, *, server_address: str | None = None, timeout: float = 30.0
    ) -> AdminSession:
        return cls(
            load_kit(Path(kit_dir), expected_type="admin"),
            server_address=server_address,
            timeout=timeout,
        )

    def __enter__(self) -> AdminSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # -- plumbing -------------------------------------------------------------

    def _call(self, command: str, **args: Any) -> Any:
        try:
            reply = self._stub.Call(
                pb.AdminRequest(command=command, args_json=json.dumps(args)), timeout=self.timeout
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, command) from None
        return json.loads(reply.result_json) if reply.result_json else None

    # -- system ---------------------------------------------------------------

    def check_status(self) -> FederationStatus:
        """The server and every site of the project, connected or not."""
        return FederationStatus.from_json(self._call("check_status"))

    def sys_info(self, target: str = "server") -> SysInfo:
        """Platform, versions, CPUs and memory of the server or a connected site."""
        return SysInfo.from_json(self._call("sys_info", target=target))

    def audit(
        self,
        *,
        since: str | None = None,
        site: str | None = None,
        event: str | None = None,
        limit: int = 100,
        verify: bool = False,
    ) -> AuditEvents:
        """The server's audit trail (project admins only): the last ``limit``
        events, at or after ``since`` (ISO UTC), naming ``site``, of ``event``;
        ``verify``: the server walks the whole chain first."""
        return AuditEvents.from_json(
            self._call("audit", since=since, site=site, event=event, limit=limit, verify=verify)
        )

    def shutdown(self, target: str = "server") -> None:
        self._call("shutdown", target=target)

    def restart(self, target: str = "server") -> None:
        self._call("restart", target=target)

    # -- jobs -----------------------------------------------------------------

    def _resolve_job_path(self, path: str | Path) -> Path:
        p = Path(path)
        transfer = self.kit.root / "transfer" / p
        if not p.is_absolute() and transfer.exists():
            return transfer
        if p.exists():
            return p
        raise JobValidationError(
            f"{path}: no such job folder or archive (looked in {self.kit.root / 'transfer'} and here)"
        )

    def submit_job(self, path: str | Path) -> str:
        """Submit a job folder or zip; a bare name is looked up in the kit's transfer/."""
        source = self._resolve_job_path(path)
        with tempfile.TemporaryDirectory(prefix="shoal-submit-") as tmp:
            if source.is_dir():
                archive = pack_job(source, Path(tmp) / "job.zip")
            else:
                if not zipfile.is_zipfile(source):
                    raise JobValidationError(f"{source}: not a job folder or a zip archive")
                archive = source
            # Refuse here what the server would refuse after the upload.
            check_archive_size(archive)
            # Signed as it is sent: this id and these bytes, by this admin.
            signature = sign_job(
                job_id=new_job_id(),
                archive_sha256=checksum.of_file(archive, "sha256"),
                tls=self.kit.tls,
            )
            header = PayloadHeader(
                kind="job", meta={"source": source.name, "signature": signature.to_json()}
            )
            try:
                reply = self._stub.Submit(
                    frames_from_file(header, archive), timeout=max(self.timeout, 600)
                )
            except grpc.RpcError as exc:
                raise from_rpc_error(exc, "submit_job") from None
        return reply_field(json.loads(reply.result_json), "submit_job", "job_id")

    def list_jobs(
        self, *, name: str | None = None, status: str | None = None, limit: int | None = None
    ) -> list[JobSummary]:
        """The jobs this admin may see, oldest first; ``limit`` keeps the latest."""
        return jobs_from_json(self._call("list_jobs", name=name, status=status, limit=limit))

    def get_job_meta(self, job_id: str) -> JobMeta:
        """One job (a unique prefix of its id will do): summary, definition, results."""
        return JobMeta.from_json(self._call("get_job_meta", job_id=job_id))

    def abort_job(self, job_id: str) -> None:
        self._call("abort_job", job_id=job_id)

    def clone_job(self, job_id: str) -> str:
        """A copy of a job, submitted (and signed) by this admin.

        The source job's signature is checked first against the project CA
        in this kit: this admin signs again only an archive some admin of
        the project signed, never whatever the server says the job is.
        """
        source = self.get_job_meta(job_id)
        if source.package_sha256 is None:
            raise ConfigError(f"clone_job: the server did not say what job {job_id} contains")
        try:
            verify_job_signature(
                source.signature,
                ca_pem=self.kit.tls.ca_pem,
                job_id=source.job_id,
                archive_sha256=source.package_sha256,
                submitter=source.submitter or "",
                submitter_org=source.submitter_org,
            )
        except JobValidationError as exc:
            raise JobValidationError(f"clone_job {source.job_id}: not cloned: {exc}") from None
        signature = sign_job(
            job_id=new_job_id(), archive_sha256=source.package_sha256, tls=self.kit.tls
        )
        reply = self._call("clone_job", job_id=source.job_id, signature=signature.to_json())
        return reply_field(reply, "clone_job", "job_id")

    def delete_job(self, job_id: str) -> None:
        self._call("delete_job", job_id=job_id)

    def show_stats(self, job_id: str) -> JobStats:
        """A job's round, each site's state while it runs, and its metrics per round."""
        return JobStats.from_json(self._call("show_stats", job_id=job_id))

    def show_errors(self, job_id: str) -> JobErrors:
        """The error lines of a job's server and sites."""
        return JobErrors.from_json(self._call("show_errors", job_id=job_id))

    def get_log(self, job_id: str, target: str = "server", tail: int | None = None) -> str:
        """A job's log from the server (default) or a site; ``tail``: the last N lines."""
        reply = self._call("get_log", job_id=job_id, target=target, tail=tail)
        return reply_field(reply, "get_log", "log")

    def download_job(self, job_id: str, dest: str | Path | None = None) -> Path:
        """Download a job's results (models, metrics, logs) into ``dest/<job_id>/``."""
        base = Path(dest) if dest is not None else self.kit.root / "transfer"
        full_id = self.get_job_meta(job_id).job_id
        target = base / full_id
        base.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".download-", dir=base) as tmp:
            archive = Path(tmp) / "results.zip"
            try:
                frames = self._stub.Download(
                    pb.AdminRequest(
                        command="download_job", args_json=json.dumps({"job_id": full_id})
                    )
                )
                header = read_header(frames)
                receive_to_file(header, frames, archive, max_size=MAX_DOWNLOAD_BYTES)
            except grpc.RpcError as exc:
                raise from_rpc_error(exc, "download_job") from None
            from shoal.jobs import safe_extract

            staged = Path(tmp) / "out"
            safe_extract(
                archive,
                staged,
                max_total_bytes=MAX_DOWNLOAD_BYTES,
                max_archive_bytes=MAX_DOWNLOAD_BYTES,
                max_ratio=10_000,
            )
            if target.exists():
                import shutil

                shutil.rmtree(target)
            staged.rename(target)
        return target

    def wait_for_job(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll_s: float = 0.5,
        on_poll: Callable[[JobMeta], None] | None = None,
    ) -> JobMeta:
        """Block until the job is FINISHED:*; raises TimeoutError after ``timeout``.
        ``on_poll`` sees each answer, the last one included (a progress bar)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            meta = self.get_job_meta(job_id)
            if on_poll is not None:
                on_poll(meta)
            if jobstatus.is_finished(meta.status):
                return meta
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {meta.status} after {timeout} s")
            time.sleep(poll_s)
