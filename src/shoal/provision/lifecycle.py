"""Certificates over a project's life: renew one participant's, add a participant.

    renew(Path("project.yml"), Path("workspace"), ["site-1"])      # a new kit for site-1
    add_participants(Path("project.yml"), Path("workspace"), ["site-3"])  # after editing it in

Both write a new ``prod_NN`` holding only the named kits, with certificates
from the project's existing CA: every other kit, the CA and its key stay
byte-for-byte as they were, and stay valid. A renewed participant swaps its
kit and restarts; nobody else does anything. The old certificate stays valid
until it expires (``shoal provision --revoke`` would revoke every certificate
of that name, the new one included).

An added site connects to the running server at once: the server trusts any
client certificate from the project CA, and knows a site from its first
connection on (``shoal.server.sites``); no restart.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from shoal.errors import ConfigError, NotFoundError
from shoal.provision.builder import DEFAULT_VALIDITY_DAYS, ProvisionResult, provision
from shoal.provision.project import load_project
from shoal.provision.state import STATE_DIR, read_ledger

__all__ = ["add_participants", "issued_names", "renew"]

logger = logging.getLogger(__name__)


def issued_names(project_file: Path, workspace: Path) -> set[str]:
    """Names that have had a certificate from this project's CA (``issued.json``)."""
    project = load_project(Path(project_file))
    state = Path(workspace) / project.name / STATE_DIR
    if not state.is_dir():
        raise NotFoundError(
            f"{state}: project {project.name} has not been provisioned in {workspace}"
        )
    return {record.name for record in read_ledger(state)}


def renew(
    project_file: Path,
    workspace: Path,
    names: Sequence[str],
    *,
    validity_days: int = DEFAULT_VALIDITY_DAYS,
) -> ProvisionResult:
    """New kits (new keys, new certificates, same CA) for participants already issued."""
    return _issue(project_file, workspace, names, validity_days, renewing=True)


def add_participants(
    project_file: Path,
    workspace: Path,
    names: Sequence[str],
    *,
    validity_days: int = DEFAULT_VALIDITY_DAYS,
) -> ProvisionResult:
    """Kits for participants new to ``project_file``, from the existing CA."""
    return _issue(project_file, workspace, names, validity_days, renewing=False)


def _issue(
    project_file: Path,
    workspace: Path,
    names: Sequence[str],
    validity_days: int,
    *,
    renewing: bool,
) -> ProvisionResult:
    """Renewing: every name must have had a certificate; adding: none may have."""
    if not names:
        raise ConfigError("name at least one participant")
    issued = issued_names(project_file, workspace)
    wrong = [n for n in names if (n in issued) != renewing]
    if wrong and renewing:
        raise NotFoundError(
            f"renew: {', '.join(wrong)} never had a certificate in this project; "
            "use --add for a new participant"
        )
    if wrong:
        raise ConfigError(
            f"add: {', '.join(wrong)} already had a certificate in this project; "
            "use --renew for a new one"
        )
    result = provision(project_file, workspace, validity_days=validity_days, only=names)
    logger.info(
        "%s %s in %s", "renewed" if renewing else "added", ", ".join(names), result.prod_dir
    )
    return result
