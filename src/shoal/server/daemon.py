"""The server daemon: sessions, job store, scheduler, Fleet and Admin services.

    with ServerDaemon(load_kit(path, expected_type="server")) as server:
        print(server.ports)        # {"fed": 8002, "admin": 8003, "health": 8004}
        server.wait()              # until SIGTERM / shutdown command

A daemon is a context manager: ``start()`` binds every port before it returns
(ports 0 pick free ones, reported in ``ports`` and in ``server_ready.json``);
``stop()`` stops accepting, tells connected sites, leaves running jobs
resumable, and returns.

Threads: the Fleet port (sites and their job workers) is a ``grpc.aio``
server on an event loop of its own thread, where a held stream costs a
coroutine; the Admin and health ports are synchronous gRPC servers (few
callers); the scheduler and heartbeat expiry are a thread each, and each
running job has its own (``JobRun``).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc

from shoal import __version__, jobstatus
from shoal._proto import shoal_pb2 as pb
from shoal.errors import ConfigError
from shoal.provision import Identity, Kit, identity_from_cert, load_revoked_serials
from shoal.provision.jobcreds import JobCredentialAuthority
from shoal.sandbox import confinement_mode, describe, secret_paths
from shoal.server.jobrun import JobRun
from shoal.server.sessions import SiteRegistry
from shoal.server.store import DEFAULT_SUBMITTER_QUOTA_BYTES, JobRecord, JobStore, utc_now
from shoal.transport import TLSConfig, peer_cert_pem, start_server
from shoal.transport.aio import AioServer
from shoal.transport.health import HealthEndpoint, start_health
from shoal.transport.services import add_service

__all__ = ["EXIT_RESTART", "ServerDaemon", "ServerOptions"]

log = logging.getLogger(__name__)

#: Exit code asking the kit's sub_start.sh loop to start the daemon again.
EXIT_RESTART = 75


@dataclass(frozen=True)
class ServerOptions:
    """Run-time settings; anything left None comes from the kit's fed_server.json."""

    #: Address to bind; 0.0.0.0 serves every interface.
    host: str = "0.0.0.0"
    #: Site port (0 picks a free one).
    fed_port: int | None = None
    #: Admin port (0 picks a free one).
    admin_port: int | None = None
    #: Plaintext gRPC health-check port for probes; -1 disables it.
    health_port: int | None = None
    #: A site silent this long is marked gone.
    heartbeat_timeout_s: float | None = None
    #: How often sites are asked to send a heartbeat.
    heartbeat_interval_s: float | None = None
    #: Where jobs, the store and logs live (default: the kit's folder).
    workspace: Path | None = None
    #: Model transfers (to or from sites) streamed at once; the others wait
    #: their turn. Bounds the daemon's memory whatever the number of sites
    #: (each stream holds gRPC buffers); more does not help on a few cores.
    max_transfers: int = 8
    #: Stored job bytes (archives + unpacked copies) one submitter may hold;
    #: None: $SHOAL_SUBMITTER_QUOTA_BYTES, the kit's ``submitter_quota_bytes``,
    #: else 2 GiB.
    submitter_quota_bytes: int | None = None
    #: Seconds a model transfer may move no data before it is cancelled and
    #: its slot given back: a site that stalls or stops reading loses its
    #: transfer, not the federation its slots. None: $SHOAL_TRANSFER_STALL_S,
    #: else 30.
    transfer_stall_s: float | None = None


class ServerDaemon:
    def __init__(self, kit: Kit, options: ServerOptions | None = None) -> None:
        if kit.type != "server":
            raise ConfigError(f"{kit.root}: not a server kit (type {kit.type})")
        self.kit = kit
        opts = options or ServerOptions()
        cfg = kit.config
        self.name = kit.name
        self.host = opts.host
        self.workspace = (opts.workspace or kit.root).resolve()
        self._want_ports = {
            "fed": int(opts.fed_port if opts.fed_port is not None else cfg["fed_learn_port"]),
            "admin": int(opts.admin_port if opts.admin_port is not None else cfg["admin_port"]),
            "health": int(
                opts.health_port
                if opts.health_port is not None
                else cfg.get("health_port", int(cfg["admin_port"]) + 1)
            ),
        }
        self.heartbeat_timeout_s = float(
            opts.heartbeat_timeout_s
            or os.environ.get("SHOAL_HEARTBEAT_TIMEOUT_S")
            or cfg.get("heartbeat_timeout_s", 30)
        )
        self.heartbeat_interval_s = float(opts.heartbeat_interval_s or self.heartbeat_timeout_s / 3)
        self.project_sites = tuple(
            p["name"] for p in cfg.get("participants", []) if p.get("type") == "client"
        )
        self.ports: dict[str, int] = {}
        self.max_transfers = max(1, opts.max_transfers)
        self.submitter_quota_bytes = int(
            opts.submitter_quota_bytes
            or os.environ.get("SHOAL_SUBMITTER_QUOTA_BYTES")
            or cfg.get("submitter_quota_bytes", DEFAULT_SUBMITTER_QUOTA_BYTES)
        )
        self.transfer_stall_s = float(
            opts.transfer_stall_s or os.environ.get("SHOAL_TRANSFER_STALL_S") or 30
        )
        if not self.transfer_stall_s > 0:
            raise ConfigError(f"transfer_stall_s must be > 0, got {self.transfer_stall_s!r}")
        self.start_time = time.time()
        self.registry = SiteRegistry(heartbeat_timeout_s=self.heartbeat_timeout_s)
        self.store: JobStore | None = None
        self.runs: dict[str, JobRun] = {}
        self._runs_lock = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._fleet_server: AioServer | None = None
        self._servers: list[grpc.Server] = []
        self._health: HealthEndpoint | None = None
        self._crl_path = kit.local / "crl.pem"
        self._crl_mtime: float | None = None
        self._revoked: frozenset[int] = frozenset()
        self._identities: dict[bytes, Identity | str] = {}
        self.job_credentials: JobCredentialAuthority | None = None
        self._resume_since: dict[str, float] = {}
        self.exit_code = 0

    # -- lifecycle ----------------------------------------------------------

    def __enter__(self) -> ServerDaemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop("daemon exiting")

    def start(self) -> None:
        from shoal.server.admin_service import AdminService
        from shoal.server.fleet import FleetService

        self.workspace.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(self.workspace)
        self._recover_jobs()
        self.registry.on_change(self._site_changed)
        fleet = FleetService(self, max_transfers=self.max_transfers, stall_s=self.transfer_stall_s)
        admin = AdminService(self)
        tls = self.kit.tls
        # Job workers present a per-job certificate from the server's own
        # authority (shoal.provision.jobcreds), trusted on the site port only.
        self.job_credentials = JobCredentialAuthority.load_or_create(
            self.workspace / "jobca", self.name
        )
        fleet_tls = TLSConfig(
            ca_pem=tls.ca_pem.rstrip(b"\n") + b"\n" + self.job_credentials.ca_pem,
            cert_pem=tls.cert_pem,
            key_pem=tls.key_pem,
        )
        try:
            self._fleet_server = AioServer.start(
                host=self.host,
                port=self._want_ports["fed"],
                tls=fleet_tls,
                register=[lambda s: add_service(s, fleet, "Fleet")],
                name="fleet-loop",
            )
            self.ports["fed"] = self._fleet_server.port
            admin_server, self.ports["admin"] = start_server(
                host=self.host,
                port=self._want_ports["admin"],
                tls=tls,
                register=[lambda s: add_service(s, admin, "Admin")],
                max_workers=64,
            )
            self._servers.append(admin_server)
            if self._want_ports["health"] >= 0:
                self._health = start_health(
                    self.host,
                    self._want_ports["health"],
                    {"": True, "shoal.v1.Fleet": True, "shoal.v1.Admin": True},
                )
                self.ports["health"] = self._health.port
                self._servers.append(self._health.server)
        except BaseException:
            self._stop_servers(grace=0)
            if self.store is not None:
                self.store.close()
                self.store = None
            raise
        log.info("%s", describe(None, "server hooks run beside the daemon", confinement_mode()))
        threading.Thread(target=self._schedule_loop, name="scheduler", daemon=True).start()
        threading.Thread(target=self._expire_loop, name="heartbeats", daemon=True).start()
        self._write_ready()
        log.info(
            "server %s (project %s) listening: sites on %s:%d, admin on %s:%d%s; workspace %s",
            self.name,
            self.kit.project,
            self.host,
            self.ports["fed"],
            self.host,
            self.ports["admin"],
            f", health on {self.ports['health']}" if "health" in self.ports else "",
            self.workspace,
        )

    def wait(self, timeout: float | None = None) -> bool:
        return self._stop.wait(timeout)

    def request_stop(self, *, restart: bool = False) -> None:
        self.exit_code = EXIT_RESTART if restart else 0
        self._stop.set()
        self._wake.set()

    def stop(self, reason: str = "shutting down") -> None:
        if self._health is not None:
            self._health.draining()
        self._stop.set()
        self._wake.set()
        # Tell sites first: they reconnect with backoff when we are back.
        self.registry.broadcast(pb.ServerEvent(shutdown=pb.Shutdown(reason=reason)))
        time.sleep(0.1)
        with self._runs_lock:
            runs = list(self.runs.values())
        for run in runs:
            # Not aborted: the job stays RUNNING in the store and resumes from
            # its last completed round when the server starts again.
            run.detach()
        self._stop_servers(grace=1.0)
        for session in self.registry.sessions():
            self.registry.end(session, "server stopped")
        ready = self.workspace / "server_ready.json"
        ready.unlink(missing_ok=True)
        if self.store is not None:
            self.store.close()
            self.store = None
        log.info("server %s stopped (%s)", self.name, reason)

    def _stop_servers(self, grace: float) -> None:
        if self._fleet_server is not None:
            self._fleet_server.stop(grace)
            self._fleet_server = None
        for s in self._servers:
            s.stop(grace=grace).wait(grace + 1.0)
        self._servers.clear()

    def _write_ready(self) -> None:
        info = {"pid": os.getpid(), "name": self.name, "ports": self.ports, "host": self.host}
        tmp = self.workspace / ".server_ready.json.tmp"
        tmp.write_text(json.dumps(info))
        os.replace(tmp, self.workspace / "server_ready.json")

    # -- identities -----------------------------------------------------------

    def identify(
        self, context: grpc.ServicerContext, *, expected_type: str | tuple[str, ...]
    ) -> Identity:
        """The caller's identity from its verified certificate, or abort the call."""
        try:
            return self._check_peer(context, expected_type)
        except _Refused as refused:
            context.abort(refused.code, refused.details)
            raise AssertionError("unreachable: abort raises") from None

    async def identify_aio(
        self, context: grpc.aio.ServicerContext, *, expected_type: str | tuple[str, ...]
    ) -> Identity:
        """:meth:`identify` for a call of the ``grpc.aio`` Fleet server."""
        try:
            return self._check_peer(context, expected_type)
        except _Refused as refused:
            await context.abort(refused.code, refused.details)
            raise AssertionError("unreachable: abort raises") from None

    def _check_peer(self, context: Any, expected_type: str | tuple[str, ...]) -> Identity:
        """The checks of both ``identify`` methods; raises _Refused."""
        pem = peer_cert_pem(context)
        if pem is None:
            log.warning("refused %s: no client certificate", context.peer())
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
        who = self._identity(pem)
        if isinstance(who, str):
            log.warning("refused %s: %s", context.peer(), who)
            raise _Refused(grpc.StatusCode.PERMISSION_DENIED, who)
        revoked = self._revoked_serials()
        if who.serial in revoked or (who.site_serial is not None and who.site_serial in revoked):
            log.warning("refused %s (%s): certificate revoked", who.name, context.peer())
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED, f"certificate of {who.name} is revoked")
        allowed = (expected_type,) if isinstance(expected_type, str) else expected_type
        if who.type not in allowed:
            log.warning(
                "refused %s (%s): %s %s certificate on the %s port",
                who.name,
                context.peer(),
                "an" if who.type[:1] in "aeiou" else "a",
                who.type,
                "admin" if "admin" in allowed else "site",
            )
            raise _Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{who.name} is a {who.type}; this port serves {allowed[0]}s only"
                if len(allowed) == 1
                else f"{who.name} is a {who.type}; this call serves {' or '.join(allowed)}s only",
            )
        return who

    def _identity(self, pem: bytes) -> Identity | str:
        """Who ``pem`` is, or why it is refused (a str).

        A worker certificate counts only if the job credential authority
        signed it, and that authority signs nothing else: a project
        certificate cannot pass for a worker, nor a worker for a site.
        """
        # Every call carries the (already verified) certificate; parsing it
        # each time was most of a heartbeat's cost with 1000 sites connected.
        who = self._identities.get(pem)
        if who is None:
            if len(self._identities) > 10_000:
                self._identities.clear()
            who = identity_from_cert(pem)
            by_jobs = self.job_credentials is not None and self.job_credentials.issued(pem)
            if by_jobs != (who.type == "worker"):
                who = f"{who.name}: a {who.type} certificate from the wrong authority"
            self._identities[pem] = who
        return who

    def _revoked_serials(self) -> frozenset[int]:
        try:
            mtime = self._crl_path.stat().st_mtime
        except FileNotFoundError:
            return frozenset()
        if mtime != self._crl_mtime:
            self._revoked = load_revoked_serials(self._crl_path, self.kit.tls.ca_pem)
            self._crl_mtime = mtime
            log.info("loaded revocation list: %d revoked certificate(s)", len(self._revoked))
            # Sessions opened before the revocation end now, not at their next call.
            for session in self.registry.sessions():
                if session.serial in self._revoked:
                    self.registry.end(session, "certificate revoked")
        return self._revoked

    # -- jobs -----------------------------------------------------------------

    def _recover_jobs(self) -> None:
        assert self.store is not None
        for rec in self.store.list(status=[jobstatus.DISPATCHED, jobstatus.RUNNING]):
            log.info(
                "job %s (%s) was %s when the server stopped: it will resume from its last "
                "completed round",
                rec.job_id,
                rec.name,
                rec.status,
            )
            self.store.update(rec.job_id, status=jobstatus.SUBMITTED)
            self._resume_since[rec.job_id] = time.monotonic()
        n = len(self.store.list())
        log.info("job store: %d job(s) on record", n)

    def wake_scheduler(self) -> None:
        self._wake.set()

    def run_of(self, job_id: str) -> JobRun | None:
        """The running job ``job_id``, if it is running."""
        with self._runs_lock:
            return self.runs.get(job_id)

    def busy_sites(self) -> set[str]:
        with self._runs_lock:
            return {s for r in self.runs.values() for s in r.sites}

    def _schedule_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._schedule_once()
            except Exception:
                log.exception("scheduler pass failed")

    def _schedule_once(self) -> None:
        store = self.store
        if store is None:
            return
        for rec in store.list(status=jobstatus.SUBMITTED):
            with self._runs_lock:
                if rec.job_id in self.runs:
                    continue
            connected = set(self.registry.connected())
            free = connected - self.busy_sites()
            spec = rec.spec
            min_clients = int(spec.get("min_clients", 1))
            wanted = spec.get("sites") or None
            if wanted:
                chosen = sorted(wanted) if set(wanted) <= free else None
            else:
                chosen = sorted(free) if len(free) >= min_clients else None
            if chosen:
                self._dispatch(rec, chosen)
                continue
            waited = time.monotonic() - self._resume_since.get(
                rec.job_id, _mono_of(rec.submit_time)
            )
            limit = float(spec.get("start_timeout_s", 300))
            if waited > limit:
                need = f"sites {', '.join(wanted)}" if wanted else f"{min_clients} site(s)"
                reason = (
                    f"not enough sites within {limit:.0f} s: needs {need}, "
                    f"connected and free: {', '.join(sorted(free)) or 'none'}"
                )
                log.warning("job %s abandoned: %s", rec.job_id, reason)
                store.update(
                    rec.job_id, status=jobstatus.ABANDONED, end_time=utc_now(), error=reason
                )

    def _dispatch(self, rec: JobRecord, sites: list[str]) -> None:
        assert self.store is not None
        rec = self.store.update(
            rec.job_id,
            status=jobstatus.DISPATCHED,
            sites=sites,
            start_time=rec.start_time or utc_now(),
            attempts=rec.attempts + 1,
            end_time=None,
            error=None,
        )
        run = JobRun(
            rec,
            sites=sites,
            on_end=self._job_ended,
            on_progress=self.job_progress,
            secrets=secret_paths(self.kit.root, self.workspace),
        )
        with self._runs_lock:
            self.runs[rec.job_id] = run
        try:
            run.start()
        except Exception as exc:
            with self._runs_lock:
                self.runs.pop(rec.job_id, None)
            self.store.update(
                rec.job_id,
                status=jobstatus.EXECUTION_EXCEPTION,
                end_time=utc_now(),
                error=f"could not start the workflow process: {exc}",
            )
            return
        self.store.update(rec.job_id, status=jobstatus.RUNNING)
        event = pb.ServerEvent(
            start_job=pb.StartJob(
                job_id=rec.job_id,
                name=rec.name,
                package_size=rec.package_size,
                package_sha256=rec.package_sha256,
            )
        )
        for site in sites:
            session = self.registry.get(site)
            if session is not None:
                session.push(event)
        log.info("job %s (%s) dispatched to %s", rec.job_id, rec.name, ", ".join(sites))

    def _job_ended(self, run: JobRun, status: str, error: str | None) -> None:
        if self.store is None or self._stop.is_set():
            return  # shutting down: the job stays resumable
        if status != jobstatus.COMPLETED:
            abort = pb.ServerEvent(abort_job=pb.AbortJob(job_id=run.job_id, reason=status))
            for site in run.sites:
                session = self.registry.get(site)
                if session is not None:
                    session.push(abort)
        # Give sites a moment to upload their job logs so a download right
        # after FINISHED has them (each site reports when its upload is done).
        run.wait_sites_done(timeout=10.0)
        rec = self.store.get(run.job_id)
        self.store.update(
            run.job_id,
            status=status,
            end_time=utc_now(),
            error=error,
            current_round=run.progress.get("round", rec.current_round),
        )
        with self._runs_lock:
            self.runs.pop(run.job_id, None)
        log.info("job %s (%s): %s%s", run.job_id, rec.name, status, f" ({error})" if error else "")
        self._wake.set()

    def job_progress(self, run: JobRun) -> None:
        if self.store is not None and "round" in run.progress:
            self.store.update(run.job_id, current_round=int(run.progress["round"]))

    def _site_changed(self, site: str, connected: bool) -> None:
        with self._runs_lock:
            runs = [r for r in self.runs.values() if site in r.sites]
        for run in runs:
            if connected:
                run.site_back(site)
                session = self.registry.get(site)
                if session is not None and self.store is not None:
                    rec = self.store.get(run.job_id)
                    session.push(
                        pb.ServerEvent(
                            start_job=pb.StartJob(
                                job_id=rec.job_id,
                                name=rec.name,
                                package_size=rec.package_size,
                                package_sha256=rec.package_sha256,
                            )
                        )
                    )
            else:
                run.site_failed(site, "disconnected")
        if connected:
            self._wake.set()

    def _expire_loop(self) -> None:
        while not self._stop.wait(min(1.0, self.heartbeat_timeout_s / 4)):
            self.registry.expire()
            try:
                self._revoked_serials()  # picks up a new CRL within a second
            except Exception:
                log.exception("could not read the revocation list %s", self._crl_path)

    # -- status ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._runs_lock:
            running = {r.job_id: list(r.sites) for r in self.runs.values()}
        sites = []
        seen = set()
        for s in self.registry.sessions():
            seen.add(s.name)
            sites.append(
                {
                    "name": s.name,
                    "org": s.org,
                    "connected": True,
                    "address": s.peer,
                    "last_heartbeat_s_ago": round(now - s.last_heartbeat, 3),
                    "connected_since": datetime.fromtimestamp(
                        s.connected_at, timezone.utc
                    ).isoformat(),
                    "running_jobs": s.running_jobs,
                }
            )
        for name in self.project_sites:
            if name not in seen:
                sites.append(
                    {
                        "name": name,
                        "org": "",
                        "connected": False,
                        "address": None,
                        "last_heartbeat_s_ago": None,
                        "connected_since": None,
                        "running_jobs": [],
                    }
                )
        return {
            "server": {
                "name": self.name,
                "project": self.kit.project,
                "status": "started",
                "start_time": datetime.fromtimestamp(self.start_time, timezone.utc).isoformat(),
                "uptime_s": round(time.time() - self.start_time, 3),
                "running_jobs": sorted(running),
                "ports": self.ports,
                "version": __version__,
            },
            "sites": sorted(sites, key=lambda s: s["name"]),
        }

    def sys_info(self) -> dict[str, Any]:
        return local_sys_info()


class _Refused(Exception):
    """A call refused before it is served: the status the caller gets."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def local_sys_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "shoal": __version__,
        "cpus": os.cpu_count(),
        "pid": os.getpid(),
    }
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gb"] = round(pages / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return info


def _mono_of(iso: str) -> float:
    """A wall-clock ISO time as a monotonic reading (for waiting-time maths)."""
    age = time.time() - datetime.fromisoformat(iso).timestamp()
    return time.monotonic() - max(age, 0.0)
