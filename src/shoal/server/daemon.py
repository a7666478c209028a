"""The server daemon: sessions, job store, scheduler, Fleet and Admin services.

    with ServerDaemon(load_kit(path, expected_type="server")) as server:
        print(server.ports)        # {"fed": 8002, "admin": 8003, "health": 8004}
        server.wait()              # until SIGTERM / shutdown command

A daemon is a context manager: ``start()`` binds every port before it returns
(ports 0 pick free ones, reported in ``ports`` and in ``server_ready.json``);
``stop()`` stops accepting new sites and jobs, lets each running job finish
and checkpoint its round in progress (``stop_grace_s``), then tells the
connected sites, leaves the jobs resumable, and returns.

Threads: the Fleet port (sites and their job workers) is a ``grpc.aio``
server on an event loop of its own thread, where a held stream costs a
coroutine; the Admin and health ports are synchronous gRPC servers (few
callers); the scheduler and heartbeat expiry are a thread each, and each
running job has its own (``JobRun``).

The daemon builds the parts and wires them; each part gets only what it
uses: peer checks (``identity``), the scheduler (``scheduler``), the running
jobs (``runs``), the job store, and the two services (``fleet``,
``admin_service``), which never see the daemon itself.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc

from shoal import __version__
from shoal._process import EXIT_RESTART, local_sys_info
from shoal._proto import shoal_pb2 as pb
from shoal.audit import DEFAULT_MAX_BYTES as AUDIT_MAX_BYTES
from shoal.audit import AuditTrail, ConfigWatch
from shoal.errors import ConfigError
from shoal.observe.metrics import MetricsEndpoint, ServerMetrics, serve_metrics
from shoal.provision import Kit, identity_from_cert
from shoal.provision.expiry import ExpiryWatch
from shoal.provision.jobcreds import JobCredentialAuthority
from shoal.sandbox import confinement_mode, describe, secret_paths
from shoal.server.admin_service import AdminParts, AdminService
from shoal.server.fleet import FleetParts, FleetService
from shoal.server.identity import Identities
from shoal.server.jobrun import JobRun
from shoal.server.lock import LOCK_FILE, ServerLock
from shoal.server.runs import Runs
from shoal.server.scheduler import Scheduler
from shoal.server.sessions import SiteRegistry
from shoal.server.sites import KnownSites
from shoal.server.store import DEFAULT_SUBMITTER_QUOTA_BYTES, JobStore
from shoal.transport import TLSConfig, start_server
from shoal.transport.aio import AioServer
from shoal.transport.health import CERTIFICATES_SERVICE, HealthEndpoint, start_health
from shoal.transport.services import add_service

# EXIT_RESTART and local_sys_info live in shoal._process (the site daemon
# uses them too); they stay importable from here.
__all__ = ["EXIT_RESTART", "ServerDaemon", "ServerOptions", "local_sys_info"]

log = logging.getLogger(__name__)


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
    #: Where the job database (SQLite), the job-credential CA and the lock
    #: live, if not in the workspace: a local or block volume, for a
    #: workspace on a bucket (SQLite needs POSIX locks and fsync).
    state_dir: Path | None = None
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
    #: Seconds a stopping server (SIGTERM, ``shutdown``) waits for each
    #: running job to finish and checkpoint its round in progress before it
    #: stops the job's workflow mid-round (the job resumes either way). Below
    #: the grace period the container runtime gives (60 s in the shipped
    #: manifests), so the checkpoint lands before a SIGKILL. None:
    #: $SHOAL_STOP_GRACE_S, else 45; 0 stops at once.
    stop_grace_s: float | None = None
    #: Size past which the audit trail (``STATE_DIR/audit/audit.jsonl``) is
    #: rotated. None: $SHOAL_AUDIT_MAX_BYTES, else 16 MiB.
    audit_max_bytes: int | None = None
    #: Port of the Prometheus ``/metrics`` endpoint (plain HTTP; 0 picks a
    #: free one); None serves none.
    metrics_port: int | None = None
    #: Address the metrics endpoint binds: loopback unless widened on purpose
    #: (a pod's Prometheus scrape needs 0.0.0.0).
    metrics_host: str = "127.0.0.1"


#: ServerOptions.stop_grace_s when neither it nor $SHOAL_STOP_GRACE_S is set.
DEFAULT_STOP_GRACE_S = 45.0


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
        self.state_dir = (opts.state_dir or self.workspace).resolve()
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
        #: The sites in the server kit; KnownSites adds those that joined since.
        self.provisioned_sites = tuple(
            p["name"] for p in cfg.get("participants", []) if p.get("type") == "client"
        )
        self.sites: KnownSites | None = None
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
        grace = opts.stop_grace_s
        if grace is None:
            grace = float(os.environ.get("SHOAL_STOP_GRACE_S") or DEFAULT_STOP_GRACE_S)
        if not grace >= 0:
            raise ConfigError(f"stop_grace_s must be >= 0, got {grace!r}")
        self.stop_grace_s = float(grace)
        self.audit_max_bytes = int(
            opts.audit_max_bytes or os.environ.get("SHOAL_AUDIT_MAX_BYTES") or AUDIT_MAX_BYTES
        )
        self._metrics_at = (opts.metrics_host, opts.metrics_port)
        self.metrics: ServerMetrics | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self.start_time = time.time()
        expires = identity_from_cert(kit.tls.cert_pem).not_after
        self._cert_not_after = expires.isoformat() if expires else None
        self.registry = SiteRegistry(heartbeat_timeout_s=self.heartbeat_timeout_s)
        self.runs = Runs()
        # Built by start(), closed by stop().
        self.store: JobStore | None = None
        self._scheduler: Scheduler | None = None
        self._stop = threading.Event()
        #: Set first when stopping: new site sessions and jobs are refused
        #: while the rounds in progress finish.
        self._draining = threading.Event()
        self._fleet_server: AioServer | None = None
        self._servers: list[grpc.Server] = []
        self._health: HealthEndpoint | None = None
        self._crl_path = kit.local / "crl.pem"
        self._lock: ServerLock | None = None
        #: The audit trail, opened by start() (beside the job database).
        self.audit: AuditTrail | None = None
        #: Warns 30 days before the server's certificate or the CA ends:
        #: in the log (at start, then daily), check_status and health.
        self.expiry = ExpiryWatch(kit.tls, kit.name, on_change=self._certificates_changed)
        self.exit_code = 0

    # -- lifecycle ----------------------------------------------------------

    def __enter__(self) -> ServerDaemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop("daemon exiting")

    def start(self) -> None:
        self.workspace.mkdir(parents=True, exist_ok=True)
        # First: a second daemon on this store fails here, before touching it.
        self._lock = ServerLock.acquire(self.state_dir / LOCK_FILE)
        try:
            audit = self.audit = AuditTrail(
                self.state_dir / "audit" / "audit.jsonl",
                actor=self.name,
                max_bytes=self.audit_max_bytes,
            )
            store = self.store = JobStore(self.workspace, state_dir=self.state_dir, audit=audit)
            self.sites = KnownSites(
                self.state_dir / "sites.json", provisioned=self.provisioned_sites
            )
        except BaseException:
            self._lock.release()
            raise
        scheduler = self._scheduler = Scheduler(
            store=store,
            registry=self.registry,
            runs=self.runs,
            secrets=lambda: [*secret_paths(self.kit.root, self.workspace), self.state_dir],
            stopping=self._stop,
            on_progress=self._count_progress,
        )
        scheduler.recover()
        self.registry.on_change(scheduler.site_changed)
        self.registry.on_change(self._audit_site)
        tls = self.kit.tls
        # Job workers present a per-job certificate from the server's own
        # authority (shoal.provision.jobcreds), trusted on the site port only.
        job_credentials = JobCredentialAuthority.load_or_create(self.state_dir / "jobca", self.name)
        identities = Identities(
            crl_path=self._crl_path,
            ca_pem=tls.ca_pem,
            job_credentials=job_credentials,
            on_new_crl=self.registry.end_revoked,
            on_refused=self._audit_refused,
        )
        fleet, admin = self._services(store, scheduler, identities, job_credentials)
        self.metrics = ServerMetrics(
            sites_connected=lambda: len(self.registry.sessions()),
            sites_known=lambda: len(self.project_sites()),
            jobs_by_state=store.count_by_status,
            transfers=fleet.transfer_load,
            certificates={"server": tls.cert_pem, "ca": tls.ca_pem},
        )
        fleet_tls = TLSConfig(
            ca_pem=tls.ca_pem.rstrip(b"\n") + b"\n" + job_credentials.ca_pem,
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
                    {
                        "": True,
                        "shoal.v1.Fleet": True,
                        "shoal.v1.Admin": True,
                        CERTIFICATES_SERVICE: True,
                    },
                )
                self.ports["health"] = self._health.port
                self._servers.append(self._health.server)
            host, port = self._metrics_at
            if port is not None:
                self._metrics_endpoint = serve_metrics(self.metrics.registry, host=host, port=port)
                self.ports["metrics"] = self._metrics_endpoint.port
        except BaseException:
            self._stop_servers(grace=0)
            scheduler.close()
            store.close()
            self.store = None
            self._lock.release()
            raise
        log.info("%s", describe(None, "server hooks run beside the daemon", confinement_mode()))
        self.expiry.start()
        audit.record(
            "server.started",
            project=self.kit.project,
            version=__version__,
            ports=self.ports,
            certificate_serial=f"{identity_from_cert(tls.cert_pem).serial:x}",
        )
        # The revocation list is the server's policy on who may connect.
        config = ConfigWatch(audit, {"crl": self._crl_path})
        config.check()
        scheduler.start()
        threading.Thread(
            target=self._expire_loop, args=(identities, config), name="heartbeats", daemon=True
        ).start()
        self._write_ready()
        log.info(
            "server %s (project %s) listening: sites on %s:%d, admin on %s:%d%s; workspace %s",
            self.name,
            self.kit.project,
            self.host,
            self.ports["fed"],
            self.host,
            self.ports["admin"],
            "".join(f", {p} on {self.ports[p]}" for p in ("health", "metrics") if p in self.ports),
            self.workspace,
        )

    def _services(
        self,
        store: JobStore,
        scheduler: Scheduler,
        identities: Identities,
        job_credentials: JobCredentialAuthority,
    ) -> tuple[FleetService, AdminService]:
        """The Fleet and Admin services, each given only the parts it uses."""
        fleet = FleetService(
            FleetParts(
                identify=identities.identify_aio,
                registry=self.registry,
                runs=self.runs,
                store=store,
                job_credentials=job_credentials,
                server_name=self.name,
                heartbeat_interval_s=self.heartbeat_interval_s,
                accepting=lambda: not self._draining.is_set(),
                moved=self._count_bytes,
                crl_pem=self._read_crl,
            ),
            max_transfers=self.max_transfers,
            stall_s=self.transfer_stall_s,
        )
        admin = AdminService(
            AdminParts(
                identify=identities.identify,
                store=store,
                registry=self.registry,
                runs=self.runs,
                status=self.status,
                sys_info=self.sys_info,
                request_stop=self.request_stop,
                wake_scheduler=scheduler.wake,
                project_sites=self.project_sites,
                submitter_quota_bytes=self.submitter_quota_bytes,
                ca_pem=self.kit.tls.ca_pem,
                stopping=self._draining.is_set,
                audit=self.audit,
            )
        )
        return fleet, admin

    def _read_crl(self) -> bytes | None:
        """The revocation list this server holds (sites check job signers
        against it and their own; it is signed by the CA, so a server can
        withhold it but not forge it)."""
        try:
            return self._crl_path.read_bytes()
        except OSError:
            return None

    def _count_progress(self, progress: Mapping[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.job_progress(progress)

    def _count_bytes(self, direction: str, kind: str, nbytes: int) -> None:
        if self.metrics is not None:
            self.metrics.moved(direction, kind, nbytes)

    def wait(self, timeout: float | None = None) -> bool:
        return self._stop.wait(timeout)

    def request_stop(self, *, restart: bool = False) -> None:
        self.exit_code = EXIT_RESTART if restart else 0
        # Refuse newcomers from now on, not only once stop() runs.
        self._draining.set()
        if self._health is not None:
            self._health.draining()
        self._stop.set()
        self.wake_scheduler()

    def stop(self, reason: str = "shutting down") -> None:
        self.expiry.stop()
        self._draining.set()
        if self._health is not None:
            self._health.draining()
        # The scheduler dispatches nothing more; it still records how the
        # running jobs end (a last round may complete a job meanwhile).
        self._stop.set()
        self.wake_scheduler()
        self._drain_runs()
        for run in self.runs.all():
            # Past the grace period: stopped mid-round, not aborted. The job
            # stays RUNNING in the store and resumes from its last checkpoint.
            # Before the sites go: a workflow that saw them leave would fail
            # its round for want of a quorum.
            run.detach()
        # Then tell sites: they reconnect with backoff when we are back.
        self.registry.broadcast(pb.ServerEvent(shutdown=pb.Shutdown(reason=reason)))
        time.sleep(0.1)
        self._stop_servers(grace=1.0)
        for session in self.registry.sessions():
            self.registry.end(session, "server stopped")
        ready = self.workspace / "server_ready.json"
        ready.unlink(missing_ok=True)
        if self._scheduler is not None:
            self._scheduler.close()
        if self.store is not None:
            self.store.close()
            self.store = None
        if self.audit is not None:
            self.audit.record("server.stopped", reason=reason)
        if self._lock is not None:
            self._lock.release()
        log.info("server %s stopped (%s)", self.name, reason)

    def _drain_runs(self) -> None:
        """Let each running job finish and checkpoint its round in progress,
        for up to ``stop_grace_s`` in all; the sites stay connected meanwhile."""
        runs = self.runs.all()
        if not runs or self.stop_grace_s <= 0:
            return
        log.info(
            "server stopping: %d running job(s) finish their round in progress "
            "(up to %.0f s), then stop and resume at the next start; new sites and jobs "
            "are refused",
            len(runs),
            self.stop_grace_s,
        )
        for run in runs:
            run.drain()
        deadline = time.monotonic() + self.stop_grace_s
        for run in runs:
            if not run.wait_ended(max(0.0, deadline - time.monotonic())):
                log.warning(
                    "job %s: round in progress not finished within the %.0f s grace period",
                    run.job_id,
                    self.stop_grace_s,
                )
        # The scheduler records a run's end on the run's own thread: let it.
        end = time.monotonic() + 12.0
        while any(r.job_id in self.runs for r in runs if r.ended) and time.monotonic() < end:
            time.sleep(0.05)

    def _stop_servers(self, grace: float) -> None:
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.stop()
            self._metrics_endpoint = None
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

    # -- jobs -----------------------------------------------------------------

    def wake_scheduler(self) -> None:
        """Have the scheduler look at the submitted jobs now."""
        if self._scheduler is not None:
            self._scheduler.wake()

    def run_of(self, job_id: str) -> JobRun | None:
        """The running job ``job_id``, if it is running."""
        return self.runs.get(job_id)

    def _expire_loop(self, identities: Identities, config: ConfigWatch) -> None:
        while not self._stop.wait(min(1.0, self.heartbeat_timeout_s / 4)):
            self.registry.expire()
            try:
                identities.revoked_serials()  # picks up a new CRL within a second
            except Exception:
                log.exception("could not read the revocation list %s", self._crl_path)
            try:
                config.check()
            except Exception:
                log.exception("could not record a configuration change in the audit trail")

    def _certificates_changed(self, warnings: list[str]) -> None:
        if self._health is not None:
            self._health.set(CERTIFICATES_SERVICE, not warnings)
        if self.audit is not None and warnings:
            self.audit.record("certificate.expiring", warnings=warnings)

    def _audit_refused(self, peer: str, why: str) -> None:
        """A caller refused before any handler ran (revoked, wrong port, wrong
        authority). Not synced: it may come from the Fleet loop's thread."""
        if self.audit is not None:
            self.audit.record("peer.refused", durable=False, peer=peer, reason=why)

    def _audit_site(self, name: str, connected: bool) -> None:
        """A site came or went. On the Fleet loop's thread: no fsync here (the
        next durable event syncs it), so a fleet reconnecting at once after a
        restart does not wait on the disk."""
        if self.audit is None:
            return
        if not connected:
            self.audit.record("site.disconnected", durable=False, site=name)
            return
        if self.sites is not None and self.sites.add(name):
            self.audit.record("site.joined", site=name)
        session = self.registry.get(name)
        resources = session.resources if session is not None else {}
        self.audit.record(
            "site.connected",
            durable=False,
            site=name,
            org=session.org if session is not None else "",
            peer=session.peer if session is not None else "",
            # The site's own trail head as it said at connect: its trail
            # must still hold that line (see docs/security.md).
            site_audit_head=str(resources.get("audit_head") or ""),
        )

    # -- status ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        running = {r.job_id: list(r.sites) for r in self.runs.all()}
        sites = []
        seen = set()
        # What each site last published of its policy (None: nothing yet);
        # a job is refused at submit by these (``AdminService.submit``).
        policies = self.registry.policies()
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
                    # As the site said at connect (it checks daily and reconnects
                    # rarely; its own log has the daily line).
                    "certificate_warnings": list(s.resources.get("certificate_warnings") or []),
                    "shoal_version": s.shoal_version or None,
                    "cert_not_after": s.cert_not_after,
                    "policy": policies.get(s.name),
                }
            )
        for name in self.project_sites():
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
                        "policy": policies.get(name),
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
                "certificate_warnings": list(self.expiry.warnings),
                "cert_not_after": self._cert_not_after,
            },
            "sites": sorted(sites, key=lambda s: s["name"]),
        }

    def sys_info(self) -> dict[str, Any]:
        return local_sys_info()

    def project_sites(self) -> tuple[str, ...]:
        """The project's sites: the kit's, and those that joined since."""
        return self.sites.names() if self.sites is not None else self.provisioned_sites
