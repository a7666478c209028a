"""Container health check: ask a daemon's grpc.health.v1 port whether it is SERVING.

Kubernetes probes the port natively (``grpc:`` probes); Docker and Compose
need a command, which is this one. Exit 0 when SERVING, 1 otherwise.

    python -m shoal.deploy.healthcheck 8004
    python -m shoal.deploy.healthcheck          # the image's HEALTHCHECK

Without a port it asks ``$SHOAL_HEALTH_PORT``, else the server kit's
``health_port`` (``$SHOAL_KIT_DIR/startup/fed_server.json``, default the
admin port + 1); with none of them (a site without a health port, an admin
console, a one-off command) there is nothing to ask and it exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["check", "default_port", "main"]


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


def default_port(environ: Mapping[str, str] | None = None) -> int | None:
    """The health port of the daemon in this container, when it has one."""
    env = os.environ if environ is None else environ
    if env.get("SHOAL_HEALTH_PORT"):
        return int(env["SHOAL_HEALTH_PORT"])
    server_json = Path(env.get("SHOAL_KIT_DIR") or "/opt/shoal/kit", "startup", "fed_server.json")
    try:
        cfg = json.loads(server_json.read_text())
    except (OSError, ValueError):
        return None
    port = cfg.get("health_port", int(cfg.get("admin_port", 0)) + 1)
    return int(port) if int(port) > 1 else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoal.deploy.healthcheck")
    parser.add_argument("port", type=int, nargs="?", help="default: see the module's docstring")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--service", default="")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    port = args.port if args.port is not None else default_port()
    if port is None:
        print("no health port here (SHOAL_HEALTH_PORT, a server kit): nothing to check")
        return 0
    ok = check(port, host=args.host, service=args.service, timeout=args.timeout)
    print("SERVING" if ok else "NOT SERVING")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
