"""The standard gRPC health service, in plaintext, for probes (Kubernetes,
docker-compose). It says whether a daemon is alive; it carries no data."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from shoal.transport.channels import start_server

__all__ = [
    "CERTIFICATES_SERVICE",
    "FLEET_SERVICE",
    "SITE_SERVICE",
    "HealthEndpoint",
    "start_health",
]

#: Per-service statuses a probe can ask for (grpc.health.v1 ``service``). The
#: empty name is a daemon's liveness; these say whether it can do its job.
#: A site serves ``SITE_SERVICE`` only while connected to its server, so a
#: readiness probe asking for it fails while the site is cut off.
SITE_SERVICE = "shoal.v1.Site"
#: The server's site port; NOT_SERVING once the server is draining.
FLEET_SERVICE = "shoal.v1.Fleet"
#: NOT_SERVING while the daemon's certificate or the project CA ends within
#: 30 days (shoal.provision.expiry): for monitoring to alert on. No shipped
#: probe asks for it: an expiring certificate must not restart a daemon.
CERTIFICATES_SERVICE = "shoal.v1.Certificates"


class HealthEndpoint:
    """A running health server; ``set(service, serving)`` flips a status."""

    def __init__(self, server: grpc.Server, port: int, servicer: health.HealthServicer) -> None:
        self.server = server
        self.port = port
        self._servicer = servicer

    def set(self, service: str, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self._servicer.set(service, status)

    def draining(self) -> None:
        """Every service NOT_SERVING from now on (a daemon shutting down)."""
        self._servicer.enter_graceful_shutdown()

    def stop(self, grace: float = 0.5) -> None:
        self.server.stop(grace)


def start_health(host: str, port: int, serving: dict[str, bool]) -> HealthEndpoint:
    """Serve grpc.health.v1 on ``host:port`` (0: any free port) with initial statuses."""
    servicer = health.HealthServicer()
    server, bound = start_server(
        host=host,
        port=port,
        tls=None,
        register=[lambda s: health_pb2_grpc.add_HealthServicer_to_server(servicer, s)],
        max_workers=4,
    )
    endpoint = HealthEndpoint(server, bound, servicer)
    for service, up in serving.items():
        endpoint.set(service, up)
    return endpoint
