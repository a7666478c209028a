"""`shoal client --kit DIR`: run a site daemon in the foreground."""

from __future__ import annotations

import argparse
from pathlib import Path

from shoal.cli._daemon import add_metrics_args, install_file_log, private_files, serve

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("client", help="run a site daemon from a client startup kit")
    p.add_argument("--kit", type=Path, required=True, help="the site's kit folder")
    p.add_argument(
        "--server",
        help="host:port of the server (default: $SHOAL_SERVER_ADDRESS, else the kit's)",
    )
    p.add_argument("--health-port", type=int, help="serve gRPC health checks on this port")
    p.add_argument("--workspace", type=Path, help="where job folders live (default: the kit)")
    add_metrics_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from shoal.client.daemon import SiteDaemon, SiteOptions
    from shoal.provision import load_kit

    private_files()
    kit = load_kit(args.kit, expected_type="client")
    install_file_log(Path(args.workspace or kit.root) / "log.txt")
    daemon = SiteDaemon(
        kit,
        SiteOptions(
            server_address=args.server,
            workspace=args.workspace,
            health_port=args.health_port,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
        ),
    )

    return serve(daemon)
