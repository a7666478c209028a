"""`shoal server --kit DIR`: run the server daemon in the foreground."""

from __future__ import annotations

import argparse
from pathlib import Path

from shoal.cli._daemon import add_metrics_args, install_file_log, private_files, serve

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="run the server daemon from a server startup kit")
    p.add_argument("--kit", type=Path, required=True, help="the server's kit folder")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--fed-port", type=int, help="site port (default: the kit's; 0 = any free)")
    p.add_argument("--admin-port", type=int, help="admin port (default: the kit's; 0 = any free)")
    p.add_argument("--health-port", type=int, help="plaintext gRPC health port; -1 disables")
    p.add_argument(
        "--heartbeat-timeout", type=float, help="seconds of silence before a site is gone"
    )
    p.add_argument("--workspace", type=Path, help="where jobs and logs live (default: the kit)")
    p.add_argument(
        "--state-dir",
        type=Path,
        help="where the job database, the job-credential CA, the lock and the log live "
        "(default: the workspace); a local or block volume when the workspace is a bucket",
    )
    p.add_argument(
        "--max-transfers",
        type=int,
        default=8,
        help="model transfers streamed at once; bounds memory (default 8)",
    )
    p.add_argument(
        "--transfer-stall-s",
        type=float,
        help="seconds a transfer may move no data before its slot is taken back "
        "(default $SHOAL_TRANSFER_STALL_S or 30)",
    )
    p.add_argument(
        "--submitter-quota-bytes",
        type=int,
        help="stored job bytes one submitter may hold "
        "(default $SHOAL_SUBMITTER_QUOTA_BYTES, the kit's, or 2 GiB)",
    )
    p.add_argument(
        "--stop-grace-s",
        type=float,
        help="on SIGTERM, seconds running jobs get to finish and checkpoint their round "
        "in progress before they are stopped mid-round (default $SHOAL_STOP_GRACE_S or 45; "
        "keep it below the container's grace period)",
    )
    add_metrics_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from shoal.provision import load_kit
    from shoal.server.daemon import ServerDaemon, ServerOptions

    private_files()
    kit = load_kit(args.kit, expected_type="server")
    workspace = args.workspace or kit.root
    # An append-only log belongs with the database: a bucket mount uploads a
    # file whole on every flush, and only when it is closed.
    install_file_log(Path(args.state_dir or workspace) / "log.txt")
    daemon = ServerDaemon(
        kit,
        ServerOptions(
            host=args.host,
            fed_port=args.fed_port,
            admin_port=args.admin_port,
            health_port=args.health_port,
            heartbeat_timeout_s=args.heartbeat_timeout,
            workspace=args.workspace,
            state_dir=args.state_dir,
            max_transfers=args.max_transfers,
            transfer_stall_s=args.transfer_stall_s,
            submitter_quota_bytes=args.submitter_quota_bytes,
            stop_grace_s=args.stop_grace_s,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
        ),
    )

    return serve(daemon)
