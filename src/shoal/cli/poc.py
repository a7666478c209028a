"""`shoal poc prepare|start|stop|status|admin|dashboard`: a local federation for trying shoal."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("poc", help="a local proof-of-concept federation (real mTLS, loopback)")
    p.add_argument("-w", "--workspace", type=Path, default=Path("poc-workspace"))
    poc = p.add_subparsers(dest="poc_command", metavar="ACTION", required=True)
    prep = poc.add_parser("prepare", help="write a local project and its startup kits")
    prep.add_argument("-n", "--num-sites", type=int, default=2)
    prep.add_argument("--fed-port", type=int, help="site port (default: a free one)")
    prep.add_argument("--admin-port", type=int, help="admin port (default: a free one)")
    prep.add_argument("--force", action="store_true", help="replace an existing POC workspace")
    prep.set_defaults(func=_prepare)
    st = poc.add_parser("start", help="start the server and sites; returns when all are connected")
    st.add_argument("--timeout", type=float, default=60.0)
    st.set_defaults(func=_start)
    poc.add_parser("stop", help="stop every POC process").set_defaults(func=_stop)
    poc.add_parser("status", help="which POC processes are running").set_defaults(func=_status)
    adm = poc.add_parser("admin", help="the admin console, pointed at the POC server")
    adm.add_argument("--json", action="store_true", help="machine-readable output")
    adm.add_argument("rest", nargs=argparse.REMAINDER, help="an admin command to run instead")
    adm.set_defaults(func=_admin)
    dash = poc.add_parser("dashboard", help="the admin's live web dashboard of the POC federation")
    dash.add_argument("--port", type=int, help="port to listen on (default 8765)")
    dash.set_defaults(func=_dashboard)


def _prepare(args: argparse.Namespace) -> int:
    from shoal import poc

    layout = poc.prepare(
        args.workspace,
        num_sites=args.num_sites,
        fed_port=args.fed_port,
        admin_port=args.admin_port,
        force=args.force,
    )
    print(f"POC project with {len(layout.site_kits)} site(s) in {layout.workspace}")
    print(
        f"  server kit: {layout.server_kit}  (sites: {layout.fed_address}, admin: {layout.admin_address})"
    )
    print(f"  admin kit:  {layout.admin_kit}")
    print("next: shoal poc -w", args.workspace, "start")
    return 0


def _start(args: argparse.Namespace) -> int:
    from shoal import poc

    t0 = time.monotonic()
    layout = poc.start(args.workspace, timeout=args.timeout)
    print(
        f"server1 and {len(layout.site_kits)} site(s) running and connected "
        f"in {time.monotonic() - t0:.2f} s; logs in {layout.run_dir / 'logs'}"
    )
    print(f"admin console: shoal poc -w {args.workspace} admin")
    print(f"web dashboard: shoal poc -w {args.workspace} dashboard")
    return 0


def _stop(args: argparse.Namespace) -> int:
    from shoal import poc

    t0 = time.monotonic()
    stopped = poc.stop(args.workspace)
    print(
        f"stopped {', '.join(stopped) or 'nothing (none running)'} in {time.monotonic() - t0:.2f} s"
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    from shoal import poc

    st = poc.status(args.workspace)
    for name, p in st["processes"].items():
        print(f"{name:<12} {'running' if p['running'] else 'stopped':<8} pid {p['pid'] or '-'}")
    return 0 if all(p["running"] for p in st["processes"].values()) else 1


def _admin(args: argparse.Namespace) -> int:
    from shoal import poc
    from shoal.cli.app import main

    layout = poc.load_layout(args.workspace)
    rest = [a for a in args.rest if a != "--"]
    flags = ["--json"] if args.json else []
    return main(
        ["admin", "--kit", str(layout.admin_kit), "--server", layout.admin_address, *flags, *rest]
    )


def _dashboard(args: argparse.Namespace) -> int:
    from shoal import poc
    from shoal.cli.app import main

    layout = poc.load_layout(args.workspace)
    port = [] if args.port is None else ["--port", str(args.port)]
    return main(
        ["dashboard", "--kit", str(layout.admin_kit), "--server", layout.admin_address, *port]
    )
