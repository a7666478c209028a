"""The site daemon: connects out to the server, runs job workers.

    with SiteDaemon(load_kit(path, expected_type="client")) as site:
        site.wait()

It dials the server (never listens for it), holds one ``Connect`` stream on
which the server pushes job starts, aborts, deletions and shutdowns, and
heartbeats. Job folders are removed by the kit's retention rule
(``local/retention.json``, see ``shoal.client.retention``): at once when the
server says the job was deleted, otherwise once unchanged for
``keep_finished_days``; a sweep runs at start and every ``sweep_interval_s``.
When the server goes away it reconnects with exponential backoff and jitter:
a server restart never needs a site restart. User code runs only in job
worker processes, each in its own process group, so a crashing or aborted
job never takes the daemon down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from shoal import __version__, checksum
from shoal._process import EXIT_RESTART, local_sys_info
from shoal._proto import shoal_pb2 as pb
from shoal._threads import thread_env
from shoal.audit import DEFAULT_MAX_BYTES as AUDIT_MAX_BYTES
from shoal.audit import AuditTrail, ConfigWatch
from shoal.client import retention
from shoal.client.api import WORKER_CONFIG_ENV
from shoal.client.policy import (
    POLICY_FILE,
    Caps,
    JobFacts,
    PolicyCache,
    PolicyRefusedError,
    Principal,
    SitePolicy,
)
from shoal.client.worker import WorkerConfig
from shoal.errors import (
    ConfigError,
    NotAuthorizedError,
    NotFoundError,
    PeerRejectedError,
    ShoalError,
)
from shoal.filters import SITE_POINTS, parse_filters, site_order, specs_to_json
from shoal.filters.local import FILTERS_FILE, local_filters
from shoal.jobs.signature import verify_job_signature
from shoal.observe.metrics import MetricsEndpoint, SiteMetrics, serve_metrics
from shoal.privacy.secagg import SECAGG_WORKFLOWS, issue_credential
from shoal.provision import Kit
from shoal.provision.expiry import ExpiryWatch
from shoal.provision.jobcreds import new_worker_key
from shoal.provision.pki import load_crl_serials, load_revoked_serials
from shoal.sandbox import (
    Confinement,
    JobUser,
    confinement_mode,
    describe,
    job_env,
    job_user,
    secret_paths,
)
from shoal.transport import PayloadHeader, from_rpc_error, open_channel, read_header
from shoal.transport.frames import frames_from_file, receive_to_file
from shoal.transport.health import (
    CERTIFICATES_SERVICE,
    SITE_SERVICE,
    HealthEndpoint,
    start_health,
)
from shoal.transport.services import ServiceStub

__all__ = ["SiteDaemon", "SiteOptions"]

log = logging.getLogger(__name__)

#: Largest job package a site accepts.
MAX_PACKAGE_BYTES = 1024**3


@dataclass(frozen=True)
class SiteOptions:
    """Run-time settings; None means: from the kit / environment."""

    #: host:port to dial; default $SHOAL_SERVER_ADDRESS, else $SHOAL_SERVER_HOST (or the
    #: kit's server host) with the kit's port. The TLS name checked is always the kit's.
    server_address: str | None = None
    #: Where job folders and logs live (default: the kit's folder).
    workspace: Path | None = None
    #: Plaintext gRPC health port for probes (None: no health server).
    health_port: int | None = None
    #: Python interpreter for job workers.
    python: str = sys.executable
    #: Longest pause between reconnection attempts.
    max_backoff_s: float = 5.0
    #: Size past which the site's audit trail (``WORKSPACE/audit/audit.jsonl``)
    #: is rotated. None: $SHOAL_AUDIT_MAX_BYTES, else 16 MiB.
    audit_max_bytes: int | None = None
    #: Port of the Prometheus ``/metrics`` endpoint (plain HTTP; 0 picks a
    #: free one); None serves none.
    metrics_port: int | None = None
    #: Address the metrics endpoint binds: loopback unless widened on purpose.
    metrics_host: str = "127.0.0.1"


@dataclass
class _Worker:
    job_id: str
    proc: subprocess.Popen[bytes] | None = None
    aborted: str | None = None
    user: JobUser | None = None
    #: The thread preparing, running and reporting the job (see ``_busy``).
    thread: threading.Thread | None = None
    #: Why the daemon stopped it for a resource cap (wall time); None if not.
    capped: str | None = None


def _busy(worker: _Worker) -> bool:
    """True while the job's folder is in use: from its dispatch until its
    thread has uploaded the log and reported (a thread not yet started counts)."""
    t = worker.thread
    return t is None or t.ident is None or t.is_alive()


@dataclass(frozen=True)
class _Prepared:
    """A fetched and unpacked job, ready to start."""

    script: Path
    args: list[str]
    env: dict[str, str]
    meta: dict[str, Any]
    #: The worker's own key and certificate (PEM), from FetchJob.
    key_pem: bytes
    cert_pem: bytes
    #: The site's and the job's filters by site point, in the order they run
    #: (``shoal.filters.specs_to_json`` form).
    filters: dict[str, list[dict[str, Any]]]
    #: The job's name, and what its worker tracks itself (``WorkerConfig``).
    name: str = ""
    tracking: dict[str, Any] = dataclasses.field(default_factory=dict)
    metrics_private: bool = False
    #: A secure-aggregation job's signing credential (JSON), made here with
    #: the site's key, which the worker never holds; None for other jobs.
    secagg_credential: str | None = None
    #: The site policy's resource caps, as they were when the job was accepted.
    caps: Caps = dataclasses.field(default_factory=Caps)


class SiteDaemon:
    def __init__(self, kit: Kit, options: SiteOptions | None = None) -> None:
        if kit.type != "client":
            raise ConfigError(f"{kit.root}: not a client (site) kit (type {kit.type})")
        self.kit = kit
        self.opts = options or SiteOptions()
        server = kit.config["server"]
        self.server_name = str(server["name"])
        host = os.environ.get("SHOAL_SERVER_HOST") or server.get("host") or server["name"]
        self.server_address = (
            self.opts.server_address
            or os.environ.get("SHOAL_SERVER_ADDRESS")
            or f"{host}:{server['fed_learn_port']}"
        )
        self.workspace = (self.opts.workspace or kit.root).resolve()
        self.name = kit.name
        self.session_id: str | None = None
        self.connected = threading.Event()
        self.exit_code = 0
        self._stop = threading.Event()
        self._workers: dict[str, _Worker] = {}
        self._lock = threading.Lock()
        self._call: Any = None
        self._health: HealthEndpoint | None = None
        self.health_port: int | None = None
        self._channel = open_channel(self.server_address, kit.tls, server_name=self.server_name)
        self._stub = ServiceStub(self._channel, "Fleet")
        self._thread: threading.Thread | None = None
        self.retention = retention.load_policy(kit.local / retention.RETENTION_FILE)
        #: Jobs the server said were deleted whose folders are not yet removed.
        self._forgotten: set[str] = set()
        self._sweep_wake = threading.Event()
        #: Warns 30 days before the site's certificate or the CA ends: in
        #: the log (at start, then daily), health, and the server's check_status.
        self.expiry = ExpiryWatch(kit.tls, kit.name, on_change=self._certificates_changed)
        #: The site's own audit trail: every job's code accepted or refused
        #: (with its hash), every job's start and end, every change of the
        #: site's configuration. It stays on the site; the server learns
        #: only its head at each connect.
        self.audit = AuditTrail(
            self.workspace / "audit" / "audit.jsonl",
            actor=self.name,
            max_bytes=int(
                self.opts.audit_max_bytes
                or os.environ.get("SHOAL_AUDIT_MAX_BYTES")
                or AUDIT_MAX_BYTES
            ),
        )
        #: The site's own configuration, checked at start and at every job
        #: start (when filters.yml is read). A site policy file adds itself
        #: here with ``config.add("policy", path)`` and is re-checked likewise.
        self.config = ConfigWatch(
            self.audit,
            {
                "filters": kit.root / FILTERS_FILE,
                "policy": kit.local / POLICY_FILE,
                "retention": kit.local / retention.RETENTION_FILE,
                "resources": kit.local / "resources.json",
            },
        )
        #: ``local/policy.yml``, re-read when it changes (a ``stat`` per job
        #: start and per heartbeat): which jobs run here, and their caps.
        self.policy = PolicyCache(kit.local / POLICY_FILE)
        #: The file hash of the policy last recorded, and last told the server.
        self._policy_sha: str | None = None
        self._policy_published: str | None = None
        self._policy_lock = threading.Lock()
        self.metrics = SiteMetrics(
            connected=self.connected.is_set,
            jobs_running=lambda: len(self._running_jobs()),
            certificates={"site": kit.tls.cert_pem, "ca": kit.tls.ca_pem},
        )
        self._metrics_endpoint: MetricsEndpoint | None = None
        #: Where /metrics answers, once started with ``metrics_port``.
        self.metrics_port: int | None = None

    # -- lifecycle --------------------------------------------------------------

    def __enter__(self) -> SiteDaemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        # Private whatever the caller's umask (the CLI sets 077; a library
        # user may not): job folders hold code, data and models.
        jobs = self.workspace / "jobs"
        jobs.mkdir(mode=0o700, parents=True, exist_ok=True)
        jobs.chmod(0o700)
        if self.opts.health_port is not None:
            # "" is the daemon's liveness; shoal.v1.Site whether it is connected.
            self._health = start_health(
                "0.0.0.0",
                self.opts.health_port,
                {"": True, SITE_SERVICE: False, CERTIFICATES_SERVICE: True},
            )
            self.health_port = self._health.port
        self.expiry.start()
        if self.opts.metrics_port is not None:
            self._metrics_endpoint = serve_metrics(
                self.metrics.registry, host=self.opts.metrics_host, port=self.opts.metrics_port
            )
            self.metrics_port = self._metrics_endpoint.port
        self._thread = threading.Thread(target=self._run, name="site-session", daemon=True)
        self._thread.start()
        user, why = job_user((), workspace=self.workspace)
        if user is not None:
            # Job folders are owned by their job's uid: jobs/ must let those
            # uids pass through to their own folder, never list the others.
            jobs.chmod(0o711)
        log.info("%s", describe(user, why, confinement_mode()))
        self.audit.record("site.started", project=self.kit.project, version=__version__)
        self.config.check()
        with contextlib.suppress(ConfigError):  # logged; jobs are refused until it is fixed
            self._site_policy()
        # The first sweep runs now: a site that was down when a job was deleted
        # (and so never heard of it) still drops old folders by the age rule.
        threading.Thread(target=self._sweeper, name="job-sweeper", daemon=True).start()
        log.info(
            "site %s (project %s) starting; server %s at %s; workspace %s",
            self.name,
            self.kit.project,
            self.server_name,
            self.server_address,
            self.workspace,
        )

    def wait(self, timeout: float | None = None) -> bool:
        return self._stop.wait(timeout)

    def request_stop(self, *, restart: bool = False) -> None:
        self.exit_code = EXIT_RESTART if restart else 0
        self._stop.set()
        self._sweep_wake.set()
        call = self._call
        if call is not None:
            call.cancel()

    def stop(self) -> None:
        self.expiry.stop()
        self.request_stop(restart=self.exit_code == EXIT_RESTART)
        with self._lock:
            workers = list(self._workers.values())
        for w in workers:
            self._kill(w, "site daemon stopping")
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._health is not None:
            self._health.stop()
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.stop()
        self._channel.close()
        self.audit.record("site.stopped")
        log.info("site %s stopped", self.name)

    # -- the session ------------------------------------------------------------

    def _run(self) -> None:
        # gRPC's retry policy cannot do this: a session ends when the server
        # goes away, on a call answered long before (gRPC retries a call only
        # until its first answer), and each new one says hello with the jobs
        # running now. Connect fails fast, without waitForReady, so that each
        # failed attempt is logged with its reason.
        delay = 0.2
        while not self._stop.is_set():
            try:
                self._session()
                delay = 0.2  # a session that got going resets the backoff
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    break
                err = from_rpc_error(exc, "Connect")
                if isinstance(err, (NotAuthorizedError, PeerRejectedError)):
                    log.error("server refused this site: %s", err)
                else:
                    # The details say why (refused handshake, wrong server
                    # certificate name, connection refused): without them a
                    # misconfigured site only ever logs "UNAVAILABLE".
                    log.info(
                        "not connected to server %s at %s (%s); retrying",
                        self.server_name,
                        self.server_address,
                        err,
                    )
            except ShoalError as exc:
                log.error("session failed: %s", exc)
            self._set_connected(False)
            if self._stop.is_set():
                break
            # Jitter spreads a fleet's reconnections after a server restart.
            self._stop.wait(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.opts.max_backoff_s)

    def _certificates_changed(self, warnings: list[str]) -> None:
        if self._health is not None:
            self._health.set(CERTIFICATES_SERVICE, not warnings)
        if warnings:
            self.audit.record("certificate.expiring", warnings=warnings)

    def _set_connected(self, up: bool) -> None:
        if up:
            self.connected.set()
        else:
            self.connected.clear()
            self.session_id = None
        if self._health is not None:
            self._health.set(SITE_SERVICE, up)

    def _session(self) -> None:
        policy = self._policy_summary()
        self._policy_published = policy.get("sha256")  # later edits go with a heartbeat
        hello = pb.Hello(
            site=self.name,
            shoal_version=__version__,
            resources_json=json.dumps(
                local_sys_info()
                | self._resources()
                | {
                    "audit_head": str(self.audit.head),
                    "certificate_warnings": list(self.expiry.warnings),
                    "policy": policy,
                }
            ),
            running_jobs=self._running_jobs(),
        )
        call = self._stub.Connect(hello)
        self._call = call
        beat_stop = threading.Event()
        try:
            for event in call:
                which = event.WhichOneof("body")
                if which == "welcome":
                    self.session_id = event.welcome.session_id
                    self._set_connected(True)
                    log.info(
                        "connected to server %s at %s (session %s)",
                        event.welcome.server,
                        self.server_address,
                        self.session_id[:8],
                    )
                    threading.Thread(
                        target=self._beat,
                        args=(event.welcome.heartbeat_interval_s or 5.0, beat_stop, call),
                        name="heartbeat",
                        daemon=True,
                    ).start()
                elif which == "start_job":
                    self._start_job(event.start_job)
                elif which == "abort_job":
                    self._abort_job(event.abort_job.job_id, event.abort_job.reason)
                elif which == "forget_job":
                    self._forget_job(event.forget_job.job_id)
                elif which == "shutdown":
                    sd = event.shutdown
                    if sd.site_should_exit or sd.restart:
                        log.info(
                            "server asked this site to %s: %s",
                            "restart" if sd.restart else "shut down",
                            sd.reason,
                        )
                        self.request_stop(restart=sd.restart)
                        return
                    log.info("server is going away (%s); will reconnect", sd.reason)
                    return
        finally:
            beat_stop.set()
            self._call = None

    def _beat(self, interval: float, stop: threading.Event, call: Any) -> None:
        while not stop.wait(interval):
            sid = self.session_id
            if sid is None:
                return
            # A policy edited since the server last heard it goes with this
            # beat: the server refuses at submit by what sites publish.
            summary = self._policy_summary()
            changed = summary.get("sha256") != self._policy_published
            try:
                self._stub.Beat(
                    pb.Heartbeat(
                        session_id=sid,
                        running_jobs=self._running_jobs(),
                        policy_json=json.dumps(summary) if changed else "",
                    ),
                    timeout=10,
                )
                if changed:
                    self._policy_published = summary.get("sha256")
            except grpc.RpcError as exc:
                if isinstance(from_rpc_error(exc, "Beat"), NotFoundError):
                    log.info("server no longer knows this session; reconnecting")
                    call.cancel()
                    return

    def _site_policy(self) -> SitePolicy:
        """The site policy now (re-read if the file changed); a change is
        recorded in the audit trail with the file's hash and what it says.
        ConfigError when the file is bad: jobs are then refused."""
        with self._policy_lock:  # job threads and the heartbeat: one record per change
            try:
                policy = self.policy.get()
            except ConfigError as exc:
                if self._policy_sha != "invalid":
                    self._policy_sha = "invalid"
                    self.audit.record("policy.invalid", path=str(self.policy.path), error=str(exc))
                    log.error("site policy: %s; jobs are refused until it is fixed", exc)
                raise
            if policy.sha256 != self._policy_sha:
                previous, self._policy_sha = self._policy_sha, policy.sha256
                summary = policy.summary()
                self.audit.record(
                    "policy.changed" if previous is not None else "policy.loaded",
                    path=str(self.policy.path),
                    sha256=policy.sha256,
                    previous_sha256=previous or "",
                    summary=summary,
                )
                log.info(
                    "site policy %s: %s", "changed" if previous else "loaded", json.dumps(summary)
                )
            return policy

    def _policy_summary(self) -> dict[str, Any]:
        """What the server is told of the policy (``SitePolicy.summary``); for a
        bad file, that this site refuses every job until it is fixed."""
        try:
            return self._site_policy().summary()
        except ConfigError as exc:
            return {"invalid": str(exc), "sha256": "invalid"}

    def _resources(self) -> dict[str, Any]:
        path = self.kit.local / "resources.json"
        try:
            data = json.loads(path.read_text()) if path.is_file() else {}
        except json.JSONDecodeError:
            log.warning("%s is not valid JSON; ignoring it", path)
            return {}
        return {"resources": data} if isinstance(data, dict) else {}

    def _running_jobs(self) -> list[str]:
        with self._lock:
            return [
                j for j, w in self._workers.items() if w.proc is not None and w.proc.poll() is None
            ]

    # -- jobs -------------------------------------------------------------------

    def _start_job(self, start: pb.StartJob) -> None:
        with self._lock:
            existing = self._workers.get(start.job_id)
            if existing is not None and (existing.proc is None or existing.proc.poll() is None):
                log.info("job %s: worker already running; carrying on", start.job_id)
                return
            worker = _Worker(job_id=start.job_id)
            # Set under the lock, so a sweep never sees this job without its thread.
            worker.thread = threading.Thread(
                target=self._run_job,
                args=(start, worker),
                name=f"job-{start.job_id[:8]}",
                daemon=True,
            )
            self._workers[start.job_id] = worker
        worker.thread.start()

    def _run_job(self, start: pb.StartJob, worker: _Worker) -> None:
        job_dir = self.workspace / "jobs" / start.job_id
        log_path = job_dir / "log.txt"
        state, detail = "failed", ""
        try:
            job = self._prepare(start, job_dir)
            proc = self._spawn(start.job_id, job_dir, job, worker, log_path)
            with self._lock:
                worker.proc = proc
                aborted = worker.aborted
            self.metrics.worker_started(start.job_id)
            if aborted:
                self._kill(worker, aborted)
            log.info(
                "job %s: worker process %d started (%s)", start.job_id, proc.pid, job.script.name
            )
            self._report(start.job_id, "started", f"pid {proc.pid}")
            self.audit.record("job.started", job_id=start.job_id, pid=proc.pid)
            code = self._wait(worker, proc, job.caps)
            if worker.capped:
                state, detail = "failed", worker.capped
            elif worker.aborted:
                state, detail = "aborted", worker.aborted
            elif code == 0:
                state, detail = "finished", ""
            else:
                state, detail = "failed", _failure(code, _last_error(log_path), job.caps)
            log.info(
                "job %s: worker exited with code %d (%s: %s)", start.job_id, code, state, detail
            )
        except PolicyRefusedError as exc:
            state, detail = "refused", str(exc)
            log.warning("job %s (%s): %s", start.job_id, start.name, exc)
            with open(log_path, "a") as f:
                f.write(f"shoal: {exc}\n")
        except ShoalError as exc:
            detail = str(exc)
            log.error("job %s: could not start: %s", start.job_id, exc)
            job_dir.mkdir(parents=True, exist_ok=True)
            with open(log_path, "a") as f:
                f.write(f"shoal: could not start the job: {exc}\n")
        except Exception as exc:  # a daemon must survive any job problem
            detail = f"{type(exc).__name__}: {exc}"
            log.exception("job %s: worker failed", start.job_id)
        finally:
            self.audit.record("job.ended", job_id=start.job_id, state=state, detail=detail)
            self.metrics.worker_ended(state)
            self._upload_log(start.job_id, log_path)
            self._report(start.job_id, state, detail)

    def _wait(self, worker: _Worker, proc: subprocess.Popen[bytes], caps: Caps) -> int:
        """The worker's exit code; past the policy's wall-time cap it is
        stopped (``worker.capped`` says why)."""
        if caps.wall_time_s is None:
            return proc.wait()
        try:
            return proc.wait(timeout=caps.wall_time_s)
        except subprocess.TimeoutExpired:
            worker.capped = f"stopped: exceeded the site's wall-time cap of {caps.wall_time_s:g} s"
            log.warning("job %s: %s", worker.job_id, worker.capped)
            self._kill(worker, worker.capped)
            return proc.wait()

    def _spawn(
        self, job_id: str, job_dir: Path, job: _Prepared, worker: _Worker, log_path: Path
    ) -> subprocess.Popen[bytes]:
        """Start the job's script, confined (shoal.sandbox) and with its own credential.

        Job code may write in the unpacked job, its own home, temporary
        and state folders, and read its credential and configuration. The
        state folder (``shoal.client.state_dir()``) is the one a worker
        restarted for the same job finds as the last one left it: the
        unpacked job is unpacked afresh. The log is
        written through the descriptor it inherits, so the job cannot
        rewrite it by path. Nothing else of the workspace or the kit is in
        reach, nor, when the daemon runs as root, anything of its user.
        """
        home, tmp, creds = job_dir / "home", job_dir / "tmp", job_dir / "credentials"
        state = job_dir / "state"
        for folder in (home, tmp, state, creds):
            folder.mkdir(mode=0o700, exist_ok=True)
        key_path, cert_path, ca_path = creds / "worker.key", creds / "worker.crt", creds / "ca.pem"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(job.key_pem)
        cert_path.write_bytes(job.cert_pem)
        ca_path.write_bytes(self.kit.tls.ca_pem)
        config = self._worker_config(job_id, job_dir, job.meta, key_path, cert_path, ca_path)
        config = dataclasses.replace(
            config,
            filters=job.filters,
            app_dir=str(job.script.parent),
            state_dir=str(state),
            job_name=job.name,
            tracking=job.tracking,
            metrics_private=job.metrics_private,
        )
        if job.secagg_credential is not None:
            secagg_path = creds / "secagg.json"
            fd = os.open(secagg_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(job.secagg_credential)
            config = dataclasses.replace(config, secagg_credential=str(secagg_path))
        config_path = job_dir / "worker.json"
        config_path.write_text(config.to_json())
        app_dir = job.script.parent
        env = job_env(os.environ, home=home, tmp=tmp, extra=job.env)
        with self._lock:
            workers = 1 + sum(
                1 for w in self._workers.values() if w.proc is not None and w.proc.poll() is None
            )
        # Frameworks default to a thread per core each: share the cores out.
        env.update(thread_env(env, workers=workers))
        if job.caps.gpus is not None:
            # After the job's own env: the site's cap wins over job.yml.
            env["CUDA_VISIBLE_DEVICES"] = ",".join(job.caps.gpus)
        env[WORKER_CONFIG_ENV] = str(config_path)
        env["SHOAL_SITE_NAME"] = self.name
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(
            [str(app_dir), *([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])]
        )
        writable = [job_dir / "job", home, tmp, state]
        plan = Confinement.for_job(
            writable,
            deny=secret_paths(self.kit.root, self.workspace),
            extra_read=[creds, config_path],
            label="job",
        )
        plan = dataclasses.replace(
            plan,
            memory_mb=job.caps.memory_mb,
            cpu_seconds=job.caps.cpu_seconds,
            processes=job.caps.processes,
        )
        with self._lock:
            in_use = {w.user.uid for w in self._workers.values() if w.user is not None}
        # Nor the uid owning any job folder still here (from before a
        # restart): a new job must not own an old job's files.
        with os.scandir(self.workspace / "jobs") as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    in_use.add(os.stat(os.path.join(entry.path, "job")).st_uid)
        user, _ = job_user(in_use, workspace=self.workspace)
        if user is not None:
            worker.user = user
            job_dir.chmod(0o711)
            for path in [*writable, creds, config_path]:
                _chown_tree(path, user)
            plan = dataclasses.replace(plan, uid=user.uid, gid=user.gid)
        with open(log_path, "ab") as out:
            return subprocess.Popen(
                plan.command(
                    [self.opts.python, str(job.script), *job.args], python=self.opts.python
                ),
                cwd=app_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _worker_config(
        self,
        job_id: str,
        job_dir: Path,
        meta: dict[str, Any],
        key_path: Path,
        cert_path: Path,
        ca_path: Path,
    ) -> WorkerConfig:
        """What this site's worker for ``job_id`` needs (``meta``: from the job package)."""
        return WorkerConfig(
            server_address=self.server_address,
            server_name=self.server_name,
            ca_path=str(ca_path),
            cert_path=str(cert_path),
            key_path=str(key_path),
            job_id=job_id,
            site_name=self.name,
            site_index=int(meta["site_index"]),
            num_sites=int(meta["num_sites"]),
            job_dir=str(job_dir),
            parent_pid=os.getpid(),
        )

    def _prepare(self, start: pb.StartJob, job_dir: Path) -> _Prepared:
        from shoal.jobs import APP_DIR, find_job_root, load_job_spec, safe_extract

        package = job_dir / "job.zip"
        job_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        t0 = time.monotonic()
        key_pem, public_pem = new_worker_key()
        try:
            frames = self._stub.FetchJob(
                pb.FetchJobRequest(job_id=start.job_id, worker_public_key=public_pem)
            )
            header = read_header(frames)
            receive_to_file(header, frames, package, max_size=MAX_PACKAGE_BYTES, durable=False)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, "FetchJob") from None
        if start.package_sha256 and header.meta.get("name") is None:
            raise ShoalError("job package header lacks the job name")
        cert = header.meta.get("worker_cert")
        if not isinstance(cert, str) or not cert:
            raise ShoalError("the server issued no credential for this job's worker")
        self.metrics.moved("in", "job", package.stat().st_size)
        log.info(
            "job %s (%s): package fetched, %d bytes in %.3f s",
            start.job_id,
            start.name,
            package.stat().st_size,
            time.monotonic() - t0,
        )
        code_sha256 = checksum.of_file(package, "sha256")
        # What the job runs is decided here, before any of its code is
        # unpacked: the decision and the code's hash go in the site's trail.
        verdict: dict[str, Any] = {
            "job_id": start.job_id,
            "name": start.name,
            "code_sha256": code_sha256,
            "signer": "",
            "submitter": str(header.meta.get("submitter") or ""),
            "submitter_org": str(header.meta.get("submitter_org") or ""),
            "submitter_role": str(header.meta.get("submitter_role") or ""),
        }
        verdict["signer"] = self._verify_signature(header.meta, verdict)
        try:
            if start.package_sha256 and code_sha256 != start.package_sha256:
                raise ShoalError(
                    f"job package hash {code_sha256[:12]}... is not the "
                    f"{start.package_sha256[:12]}... the server stored at submit"
                )
            self.config.check()
            policy = self._admit(start.job_id, package, verdict)
            unpacked = job_dir / "job"
            if unpacked.exists():
                shutil.rmtree(unpacked)
            safe_extract(package, unpacked)
            root = find_job_root(unpacked)
            spec = load_job_spec(root)
        except ShoalError as exc:
            self.audit.record("job.refused", **verdict, reason=str(exc))
            raise
        self.audit.record("job.accepted", **verdict, workflow=spec.workflow.name)
        script = (root / APP_DIR / spec.client.script).resolve()
        meta = {k: v for k, v in header.meta.items() if k != "worker_cert"}
        site_filters = local_filters(self.kit.root)
        filters = {
            point: specs_to_json(
                site_order(point, site_filters.get(point, ()), spec.filters.get(point, ()))
            )
            for point in SITE_POINTS
        }
        may_leave = policy.metrics_may_leave
        wants = spec.tracking.site_metrics == "site" and (
            spec.tracking.mlflow or spec.tracking.wandb
        )
        if wants and not may_leave:
            log.info(
                "job %s: asks this site to track its metrics; local/policy.yml forbids it",
                start.job_id,
            )
        return _Prepared(
            name=spec.name,
            tracking=spec.tracking.to_dict() if wants and may_leave else {},
            metrics_private=not may_leave,
            script=script,
            args=list(spec.client.args),
            env=dict(spec.client.env),
            meta=meta,
            key_pem=key_pem,
            cert_pem=cert.encode("ascii"),
            filters={point: specs for point, specs in filters.items() if specs},
            secagg_credential=self._secagg_credential(start.job_id, spec),
            caps=policy.caps,
        )

    def _admit(self, job_id: str, package: Path, verdict: dict[str, Any]) -> SitePolicy:
        """Judge the job by the site's policy, from its header (``verdict``:
        submitter, code hash, signer) and its job.yml read from the archive
        in memory: none of its code is on disk yet. PolicyRefusedError
        ("refused by site X's policy: ...") when the policy says no."""
        from shoal.jobs import read_job_file_in_zip

        try:
            policy = self._site_policy()
        except ConfigError as exc:
            raise PolicyRefusedError(
                f"refused by site {self.name}'s policy: the policy file is invalid ({exc})"
            ) from None
        doc = read_job_file_in_zip(package)
        if not isinstance(doc, dict):
            raise ShoalError("job.yml: must be a mapping of settings")
        workflow = doc.get("workflow")
        job_filters = parse_filters(doc.get("filters"), where="job.yml: filters")
        site_filters = local_filters(self.kit.root)
        with self._lock:
            running = sum(1 for j, w in self._workers.items() if j != job_id and _busy(w))
        facts = JobFacts(
            submitter=Principal(
                name=verdict["submitter"],
                org=verdict["submitter_org"],
                role=verdict["submitter_role"],
            ),
            code_sha256=verdict["code_sha256"],
            workflow=str(workflow.get("name") or "") if isinstance(workflow, dict) else "",
            signer=Principal.of(verdict["signer"]),
            filters={
                point: [
                    f.name
                    for f in site_order(
                        point, site_filters.get(point, ()), job_filters.get(point, ())
                    )
                ]
                for point in SITE_POINTS
            },
            running_jobs=running,
        )
        reason = policy.refusal(facts)
        if reason:
            raise PolicyRefusedError(f"refused by site {self.name}'s policy: {reason}")
        return policy

    def _verify_signature(self, meta: Mapping[str, Any], verdict: dict[str, Any]) -> dict[str, str]:
        """The job's signer, once its signature is checked; else refuse the job.

        The signature must be by an admin of this project (the kit's CA) who
        may submit jobs, not revoked (this site's ``local/crl.pem`` and the
        CRL the server sends, both checked against the CA), be the job's
        recorded submitter, and cover this exact package and job id. A
        refusal is recorded in the site's trail and raised (the submitter
        sees it as the job's error).
        """
        try:
            revoked = load_revoked_serials(self.kit.crl_path, self.kit.tls.ca_pem)
            crl = meta.get("crl")
            if isinstance(crl, str) and crl:
                revoked |= load_crl_serials(crl.encode("ascii"), self.kit.tls.ca_pem)
            signer = verify_job_signature(
                meta.get("signature"),
                ca_pem=self.kit.tls.ca_pem,
                job_id=verdict["job_id"],
                archive_sha256=verdict["code_sha256"],
                submitter=verdict["submitter"],
                submitter_org=verdict["submitter_org"],
                revoked=revoked,
            )
        except (ShoalError, UnicodeEncodeError) as exc:
            reason = f"refused by {self.name}: {exc}"
            self.audit.record("job.refused", **verdict, reason=reason)
            log.warning("job %s: %s", verdict["job_id"], reason)
            # A refusal like the policy's: no code of the job ran here.
            raise PolicyRefusedError(reason) from None
        log.info(
            "job %s: signed by %s (%s, %s)", verdict["job_id"], signer.name, signer.org, signer.role
        )
        return signer.to_dict()

    def _secagg_credential(self, job_id: str, spec: Any) -> str | None:
        """For a secure-aggregation job: a fresh key for the job, delegated by
        the site's key, that the worker signs its keys with (the server
        cannot then put keys of its own in their place), and the job's
        ``min_clients``, the fewest sites the worker lets a round sum with."""
        if spec.workflow.name not in SECAGG_WORKFLOWS:
            return None
        tls = self.kit.tls
        cred = issue_credential(
            site=self.name,
            job_id=job_id,
            cert_pem=tls.cert_pem,
            key_pem=tls.key_pem,
            min_sites=int(spec.min_clients),
        )
        return cred.to_json()

    def _abort_job(self, job_id: str, reason: str) -> None:
        with self._lock:
            worker = self._workers.get(job_id)
        if worker is None:
            return
        log.info("job %s: stopping worker (%s)", job_id, reason)
        self._kill(worker, reason)

    # -- job folders ------------------------------------------------------------

    def _forget_job(self, job_id: str) -> None:
        """The server deleted ``job_id``: stop its worker, and let the sweeper
        remove its folder (unless the retention policy keeps deleted jobs)."""
        if not retention.is_job_id(job_id):
            log.warning("server asked to forget %r, which is not a job id; ignored", job_id)
            return
        with self._lock:
            self._forgotten.add(job_id)
            worker = self._workers.get(job_id)
        log.info("job %s: deleted on the server", job_id)
        if worker is not None:
            self._kill(worker, "job deleted on the server")
        self._sweep_wake.set()

    def _sweeper(self) -> None:
        while not self._stop.is_set():
            self._sweep_wake.clear()
            try:
                self._sweep()
            except Exception:  # a daemon must survive a sweep problem; the next one retries
                log.exception("sweeping the job folders failed")
            with self._lock:
                pending = bool(self._forgotten)
            # A deleted job whose thread is still reporting is retried soon.
            self._sweep_wake.wait(1.0 if pending else self.retention.sweep_interval_s)

    def _sweep(self) -> list[str]:
        """One sweep of the job folders by the retention policy; the job ids removed."""
        with self._lock:
            # Decided and renamed under the lock: a job starting now either is
            # in ``busy`` or gets a fresh folder after the rename.
            busy = {j for j, w in self._workers.items() if _busy(w)}
            forgotten = set(self._forgotten)
            detached = retention.detach_stale(
                self.workspace / "jobs",
                running=busy,
                deleted=forgotten,
                policy=self.retention,
                now=time.time(),
            )
            for job_id in forgotten - busy:
                self._forgotten.discard(job_id)
                self._workers.pop(job_id, None)
        removed = [j for j, path in detached if retention.remove_detached(path)]
        if removed:
            log.info("removed %d job folder(s): %s", len(removed), ", ".join(removed))
        return removed

    def _kill(self, worker: _Worker, reason: str) -> None:
        worker.aborted = reason
        proc = worker.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _upload_log(self, job_id: str, path: Path) -> None:
        if not path.is_file():
            return
        try:
            self._stub.PutBlob(
                frames_from_file(
                    PayloadHeader(kind="blob", job_id=job_id, meta={"name": "log"}), path
                ),
                timeout=60,
            )
            self.metrics.moved("out", "log", path.stat().st_size)
        except grpc.RpcError as exc:
            log.warning("job %s: could not upload the job log: %s", job_id, exc.details())

    def _report(self, job_id: str, state: str, detail: str) -> None:
        try:
            self._stub.ReportJob(
                pb.JobEvent(
                    session_id=self.session_id or "", job_id=job_id, state=state, detail=detail
                ),
                timeout=10,
            )
        except grpc.RpcError as exc:
            log.warning("job %s: could not report %s: %s", job_id, state, exc.details())


def _chown_tree(path: Path, user: JobUser) -> None:
    """Give ``path`` (and all beneath, links themselves not followed) to ``user``."""
    os.chown(path, user.uid, user.gid, follow_symlinks=False)
    if path.is_dir() and not path.is_symlink():
        for folder, dirs, files in os.walk(path):
            for name in [*dirs, *files]:
                os.chown(os.path.join(folder, name), user.uid, user.gid, follow_symlinks=False)


def _failure(code: int, last_error: str, caps: Caps) -> str:
    """Why a worker failed, naming the site's cap it ran into when it did."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if name == "SIGXCPU" and caps.cpu_seconds is not None:
            return f"stopped: exceeded the site's CPU cap of {caps.cpu_seconds} s ({name})"
        if caps.memory_mb is not None and name in ("SIGKILL", "SIGSEGV", "SIGABRT", "SIGBUS"):
            return (
                f"killed by {name}; the site caps memory at {caps.memory_mb} MiB, "
                f"which the job probably exceeded: {last_error}"
            )
        return f"killed by {name}: {last_error}"
    if caps.memory_mb is not None and "MemoryError" in last_error:
        return f"stopped: exceeded the site's memory cap of {caps.memory_mb} MiB ({last_error})"
    return f"exit code {code}: {last_error}"


def _last_error(log_path: Path) -> str:
    """The last line of a traceback in the worker's log, for the job's error."""
    try:
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        if not line.startswith((" ", "\t")) and ("Error" in line or "Exception" in line):
            return line.strip()
    return lines[-1].strip() if lines else ""
