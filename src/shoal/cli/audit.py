"""``shoal audit verify|show``: check and read an audit trail where it lies.

    shoal audit verify workspace/audit/audit.jsonl     # exit 0, or 1 naming the first bad line
    shoal audit verify audit.jsonl --head 812:3fa4...  # and a head noted down earlier
    shoal audit show audit.jsonl -n 20 --event job.status

A site's trail stays on the site: its operator verifies it there. The
server's trail is read through the admin ``audit`` command too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from shoal.audit import Head, read_events, verify_trail

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "audit",
        help="verify or read an audit trail (server or site)",
        description="Verify the hash chain of an audit trail, or print its events.",
    )
    actions = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    verify = actions.add_parser(
        "verify",
        help="check the chain across rotated files and the anchor; exit 1 on the first bad line",
    )
    verify.add_argument(
        "path", type=Path, metavar="PATH", help="the trail (e.g. audit/audit.jsonl)"
    )
    verify.add_argument(
        "--head",
        type=Head.parse,
        metavar="SEQ:SHA256",
        help="a head noted down earlier (admin `audit` shows it): it must still be in the trail",
    )
    verify.set_defaults(func=_verify)
    show = actions.add_parser("show", help="print the trail's events, oldest first")
    show.add_argument("path", type=Path, metavar="PATH")
    show.add_argument("-n", "--limit", type=int, default=50, help="last N events (default 50)")
    show.add_argument("--since", metavar="ISO_TIME", help="events at or after this UTC time")
    show.add_argument("--event", metavar="NAME", help="only events of this name")
    show.set_defaults(func=_show)


def _verify(args: argparse.Namespace) -> int:
    report = verify_trail(args.path, expect_head=args.head)
    files = ", ".join(f.name for f in report.files)
    if not report.ok:
        print(f"FAILED: {report.problem}")
        print(f"  {report.lines} line(s) good before it, in {files}")
        return 1
    anchor = f"; anchor {report.anchor.seq} matches" if report.anchor else "; no anchor file"
    print(f"OK: {report.lines} line(s) in {files}; head {report.head}{anchor}")
    return 0


def _show(args: argparse.Namespace) -> int:
    match = {"event": args.event} if args.event else None
    for event in read_events(args.path, since=args.since, limit=args.limit, match=match):
        print(json.dumps(event, sort_keys=True))
    return 0
