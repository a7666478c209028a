"""``shoal provision``: project.yml -> startup kits (also ``--init`` and ``--revoke``).

shoal provision --init                      # write a sample project.yml
shoal provision -p project.yml -w workspace # kits in workspace/<project>/prod_NN/
shoal provision --revoke site-2 -p project.yml
shoal provision --renew site-1 -p project.yml   # a new kit for site-1 only, same CA
shoal provision --add site-3 -p project.yml     # after adding site-3 to project.yml
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from shoal.provision import (
    DEFAULT_VALIDITY_DAYS,
    ProvisionResult,
    provision,
    revoke,
    write_sample_project,
)
from shoal.provision.lifecycle import add_participants, renew

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``provision`` sub-command to the ``shoal`` parser."""
    parser = subparsers.add_parser(
        "provision",
        help="create a project CA and startup kits from project.yml",
        description=(
            "Read an NVFlare-style project.yml and write one signed startup kit per "
            "participant to WORKSPACE/<project>/prod_NN/. The project CA is kept in "
            "WORKSPACE/<project>/state/ and reused by later runs."
        ),
    )
    parser.add_argument(
        "-p",
        "--project",
        "--project-file",
        dest="project_file",
        type=Path,
        default=Path("project.yml"),
        metavar="PROJECT_YML",
        help="project file (default: ./project.yml)",
    )
    parser.add_argument(
        "-w",
        "--workspace",
        type=Path,
        default=Path("workspace"),
        help="where project folders are written (default: ./workspace)",
    )
    parser.add_argument(
        "--validity-days",
        type=int,
        default=DEFAULT_VALIDITY_DAYS,
        metavar="DAYS",
        help=f"validity of participant certificates (default: {DEFAULT_VALIDITY_DAYS})",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--init",
        action="store_true",
        help="write a commented sample project file to PROJECT_YML and stop",
    )
    action.add_argument(
        "--revoke",
        metavar="NAME",
        help="revoke NAME's certificates: update state/crl.pem and local/crl.pem of every server and site kit",
    )
    action.add_argument(
        "--renew",
        metavar="NAME",
        action="append",
        help="a new kit (new key and certificate, same CA) for NAME only, in a new prod_NN; "
        "every other kit stays as it is (repeat for several)",
    )
    action.add_argument(
        "--add",
        "--add-site",
        dest="add",
        metavar="NAME",
        action="append",
        help="a kit for NAME, newly added to PROJECT_YML, from the existing CA; nothing else "
        "changes and a running server accepts it without a restart (repeat for several)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Carry out ``shoal provision``; errors propagate to the CLI's one handler."""
    if args.init:
        write_sample_project(args.project_file)
        print(
            f"wrote {args.project_file}; edit it, then run: shoal provision -p {args.project_file}"
        )
        return 0
    if args.revoke is not None:
        crl = revoke(args.project_file, args.workspace, args.revoke)
        print(
            f"revoked {args.revoke}: CRL {crl} (copied to local/crl.pem of every server and site kit)"
        )
        return 0
    if args.renew or args.add:
        act = renew if args.renew else add_participants
        result = act(
            args.project_file,
            args.workspace,
            args.renew or args.add,
            validity_days=args.validity_days,
        )
        _print_kits(result)
        print(f"wrote {len(result.kits)} startup kit(s) to {result.prod_dir}; other kits unchanged")
        return 0
    result = provision(args.project_file, args.workspace, validity_days=args.validity_days)
    for note in result.notes:
        print(note)
    state = result.prod_dir.parent / "state"
    print(f"{'created' if result.ca_created else 'reused'} root CA in {state} (keep it private)")
    _print_kits(result)
    print(f"wrote {len(result.kits)} startup kits to {result.prod_dir}")
    return 0


def _print_kits(result: ProvisionResult) -> None:
    width = max(len(name) for name in result.kits)
    for name, path in result.kits.items():
        participant = result.project.participant(name)
        kind = participant.type if participant else "?"
        print(f"  {name:<{width}}  {kind:<6}  {path}")
