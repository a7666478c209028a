"""Prometheus metrics of the server and site daemons, on a port of their own.

Each daemon owns a :class:`prometheus_client.CollectorRegistry` (never the
library's global one), so several daemons in one process, as tests and the
simulator run them, keep their numbers apart. Counters and the round
histogram are updated as things happen; gauges that mirror state the daemon
already keeps (connected sites, jobs by state, transfers waiting, days left
on a certificate) are read when Prometheus scrapes, so they cannot drift::

    metrics = ServerMetrics(sites_connected=lambda: 2, ...)
    endpoint = serve_metrics(metrics.registry, host="127.0.0.1", port=0)
    endpoint.port          # where /metrics answers
    endpoint.stop()

The names below are a contract: ``deploy/grafana/shoal.json`` queries them
and a test checks that every name it queries is one exported here.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "METRIC_NAMES",
    "MetricsEndpoint",
    "ServerMetrics",
    "SiteMetrics",
    "certificate_days_left",
    "is_loopback",
    "serve_metrics",
]

log = logging.getLogger(__name__)

#: Round durations: from a toy model on loopback (~50 ms) to a large one (an hour).
ROUND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

# Every metric name a daemon exports (the Prometheus names, without the
# _total/_bucket/_sum/_count suffixes a counter or histogram adds).
SERVER_METRICS = (
    "shoal_sites_connected",
    "shoal_sites_known",
    "shoal_jobs",
    "shoal_rounds_completed",
    "shoal_round_duration_seconds",
    "shoal_transfer_bytes",
    "shoal_transfers_waiting",
    "shoal_transfers_active",
    "shoal_certificate_expiry_days",
)
SITE_METRICS = (
    "shoal_site_connected",
    "shoal_site_jobs_running",
    "shoal_site_worker_starts",
    "shoal_site_worker_restarts",
    "shoal_site_worker_exits",
    "shoal_transfer_bytes",
    "shoal_certificate_expiry_days",
)
#: The names of both daemons together.
METRIC_NAMES = frozenset(SERVER_METRICS + SITE_METRICS)


def certificate_days_left(cert_pem: bytes, now: datetime | None = None) -> float:
    """Days until ``cert_pem`` (the first certificate in it) expires; negative once expired."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_pem)
    now = now or datetime.now(timezone.utc)
    return (cert.not_valid_after_utc - now).total_seconds() / 86400.0


class _Gauges(Collector):
    """Gauges read at scrape time from ``read()``: ``{name: (help, {labels: value})}``."""

    def __init__(
        self, read: Callable[[], Mapping[str, tuple[str, tuple[str, ...], Mapping]]]
    ) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        try:
            gauges = self._read()
        except Exception:  # a scrape must not take the daemon down; it says why in the log
            log.exception("reading the daemon's gauges for a metrics scrape failed")
            return
        for name, (doc, label_names, values) in gauges.items():
            family = GaugeMetricFamily(name, doc, labels=list(label_names))
            for labels, value in values.items():
                family.add_metric(list(labels), float(value))
            yield family


def _certificates(certs: Mapping[str, bytes]) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for name, pem in certs.items():
        try:
            out[(name,)] = certificate_days_left(pem)
        except ValueError:
            log.warning("metrics: the %s certificate does not parse; left out", name)
    return out


_CERT_DOC = "days until the certificate expires (negative once expired)"


class _Transfers:
    """``shoal_transfer_bytes_total{direction, kind}``, shared by both daemons."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.bytes = Counter(
            "shoal_transfer_bytes",
            "bytes moved to (out) and from (in) the peers, by kind (model, job, log)",
            ["direction", "kind"],
            registry=registry,
        )

    def moved(self, direction: str, kind: str, nbytes: int) -> None:
        """Count ``nbytes`` of ``kind`` moved ``direction`` ("in" or "out")."""
        if nbytes > 0:
            self.bytes.labels(direction, kind).inc(nbytes)


class ServerMetrics(_Transfers):
    """The server daemon's metrics. The callables are read at each scrape."""

    def __init__(
        self,
        *,
        sites_connected: Callable[[], int],
        sites_known: Callable[[], int],
        jobs_by_state: Callable[[], Mapping[str, int]],
        transfers: Callable[[], tuple[int, int]],
        certificates: Mapping[str, bytes],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        super().__init__(self.registry)
        self.rounds = Counter(
            "shoal_rounds_completed",
            "rounds committed by the server's workflows (every job together)",
            registry=self.registry,
        )
        self.round_seconds = Histogram(
            "shoal_round_duration_seconds",
            "seconds from a round's task going out to its aggregate being written",
            buckets=ROUND_BUCKETS,
            registry=self.registry,
        )

        def gauges() -> dict[str, tuple[str, tuple[str, ...], Mapping]]:
            waiting, active = transfers()
            return {
                "shoal_sites_connected": ("sites connected now", (), {(): sites_connected()}),
                "shoal_sites_known": ("client sites in the project", (), {(): sites_known()}),
                "shoal_jobs": (
                    "jobs in the store by status",
                    ("state",),
                    {(state,): n for state, n in jobs_by_state().items()},
                ),
                "shoal_transfers_waiting": (
                    "model transfers waiting for a slot (the transfer queue's depth)",
                    (),
                    {(): waiting},
                ),
                "shoal_transfers_active": ("model transfers streaming now", (), {(): active}),
                "shoal_certificate_expiry_days": (
                    _CERT_DOC,
                    ("certificate",),
                    _certificates(certificates),
                ),
            }

        self.registry.register(_Gauges(gauges))

    def job_progress(self, progress: Mapping[str, object]) -> None:
        """A workflow's progress report: a ``round_done`` counts a round and its duration."""
        if progress.get("status") != "round_done":
            return
        self.rounds.inc()
        duration = progress.get("duration_s")
        if isinstance(duration, (int, float)) and not isinstance(duration, bool) and duration >= 0:
            self.round_seconds.observe(float(duration))


class SiteMetrics(_Transfers):
    """A site daemon's metrics. The callables are read at each scrape."""

    def __init__(
        self,
        *,
        connected: Callable[[], bool],
        jobs_running: Callable[[], int],
        certificates: Mapping[str, bytes],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        super().__init__(self.registry)
        self.worker_starts = Counter(
            "shoal_site_worker_starts",
            "job workers started",
            registry=self.registry,
        )
        self.worker_restarts = Counter(
            "shoal_site_worker_restarts",
            "job workers started again for a job this daemon already ran one for",
            registry=self.registry,
        )
        self.worker_exits = Counter(
            "shoal_site_worker_exits",
            "job workers ended, by how (finished, failed, aborted)",
            ["state"],
            registry=self.registry,
        )
        self._seen: set[str] = set()
        self._lock = threading.Lock()

        def gauges() -> dict[str, tuple[str, tuple[str, ...], Mapping]]:
            return {
                "shoal_site_connected": (
                    "1 while connected to the server",
                    (),
                    {(): 1 if connected() else 0},
                ),
                "shoal_site_jobs_running": ("job workers running now", (), {(): jobs_running()}),
                "shoal_certificate_expiry_days": (
                    _CERT_DOC,
                    ("certificate",),
                    _certificates(certificates),
                ),
            }

        self.registry.register(_Gauges(gauges))

    def worker_started(self, job_id: str) -> None:
        with self._lock:
            again = job_id in self._seen
            self._seen.add(job_id)
        self.worker_starts.inc()
        if again:
            self.worker_restarts.inc()

    def worker_ended(self, state: str) -> None:
        self.worker_exits.labels(state).inc()


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class MetricsEndpoint:
    """A running ``/metrics`` HTTP endpoint."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(registry: CollectorRegistry, *, host: str, port: int) -> MetricsEndpoint:
    """Serve ``registry`` on ``http://host:port/metrics`` (port 0: any free one).

    Plain HTTP, no authentication, as Prometheus scrapes by default: what it
    shows (counts, durations, days to expiry) names no job or site, but it
    stays on loopback unless the operator binds it wider on purpose.
    """
    if not is_loopback(host):
        log.warning(
            "metrics served on %s:%s, beyond loopback: anyone who can reach it can read them",
            host,
            port,
        )
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsEndpoint(host=host, port=int(server.server_port), _server=server, _thread=thread)
