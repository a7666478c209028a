"""Container health check: ask a daemon's grpc.health.v1 port whether it is SERVING.

Kubernetes probes the port natively (``grpc:`` probes); Docker and Compose
need a command, which is this one. Exit 0 when SERVING, 1 otherwise.

    python -m shoal.deploy.healthcheck 8004
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["check", "main"]


def check(port: int, *, host: str = "127.0.0.1", service: str = "", timeout: float = 3.0) -> bool:
    """True when the health service on ``host:port`` answers SERVING for ``service``."""
    # The health port is plaintext by design: it says nothing but "up".
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoal.deploy.healthcheck")
    parser.add_argument("port", type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--service", default="")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    ok = check(args.port, host=args.host, service=args.service, timeout=args.timeout)
    print("SERVING" if ok else "NOT SERVING")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
