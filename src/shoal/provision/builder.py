"""``provision()``: a validated project file -> one signed startup kit per participant.

Everything is built in a hidden temporary folder beside its target and moved
into place with one rename, so a failed run leaves the workspace as it was.
The first run creates ``WORKSPACE/<project>/`` (CA in ``state/``, kits in
``prod_00/``) in one rename; later runs reuse the CA and add ``prod_NN``.

    result = provision(Path("project.yml"), Path("workspace"))
    result.kits["site-1"]   # workspace/example_project/prod_00/site-1
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shoal.errors import ConfigError, ProvisionError
from shoal.provision.configs import config_file_name, participant_config
from shoal.provision.pki import CA_VALIDITY_DAYS, CertificateAuthority
from shoal.provision.project import Participant, Project, load_project
from shoal.provision.signing import sign_startup
from shoal.provision.state import (
    CRL_FILE,
    PROJECT_COPY,
    STATE_DIR,
    IssuedRecord,
    atomic_write,
    iso,
    load_ca,
    next_prod_name,
    read_ledger,
    save_ca,
    write_file,
    write_ledger,
)
from shoal.provision.templates import (
    fl_admin_sh,
    local_files,
    readme_txt,
    start_sh,
    stop_fl_sh,
    sub_start_sh,
)

__all__ = ["DEFAULT_VALIDITY_DAYS", "ProvisionResult", "provision"]

logger = logging.getLogger(__name__)

DEFAULT_VALIDITY_DAYS = 365


@dataclass(frozen=True)
class ProvisionResult:
    """What one ``provision()`` run wrote."""

    project: Project
    """The validated project file."""
    prod_dir: Path
    """The new ``WORKSPACE/<project>/prod_NN`` folder."""
    kits: dict[str, Path] = field(default_factory=dict)
    """Participant name -> its kit folder, in project-file order."""
    ca_created: bool = False
    """True when this run created the project CA (first run)."""
    notes: tuple[str, ...] = ()
    """One line per NVFlare builder mapped or ignored, and per ignored key."""


def provision(
    project_file: Path,
    workspace: Path,
    *,
    validity_days: int = DEFAULT_VALIDITY_DAYS,
    ca_validity_days: int = CA_VALIDITY_DAYS,
    only: Collection[str] | None = None,
) -> ProvisionResult:
    """Write a startup kit for every participant of ``project_file``.

    ``only``: kits for these participants alone, from the project's existing
    CA, in a new ``prod_NN`` (every other kit stays as it is, and valid);
    see :mod:`shoal.provision.lifecycle` for renewing and adding.

    Raises ``ConfigError`` for a bad project file or option and
    ``ProvisionError`` when the workspace cannot be written; either way
    nothing is left behind.
    """
    for option, value in (("validity_days", validity_days), ("ca_validity_days", ca_validity_days)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{option}: must be a positive number of days, got {value!r}")
    project_file = Path(project_file)
    project = load_project(project_file)
    source = project_file.read_bytes()
    workspace = Path(workspace)
    project_dir = workspace / project.name
    chosen = project.participants
    if only is not None:
        unknown = sorted(set(only) - {p.name for p in project.participants})
        if unknown:
            raise ConfigError(
                f"{project_file}: no participant named {', '.join(unknown)}; "
                "add it to participants: first"
            )
        if not (project_dir / STATE_DIR).is_dir():
            raise ProvisionError(
                f"{project_dir}: project {project.name} has no CA yet; run "
                "`shoal provision` once for the whole project first"
            )
        chosen = tuple(p for p in project.participants if p.name in set(only))

    created_workspace = _make_workspace(workspace)
    try:
        if project_dir.exists():
            result = _add_prod(project, source, project_dir, validity_days, chosen)
        else:
            result = _first_run(project, source, project_dir, validity_days, ca_validity_days)
    except BaseException:
        if created_workspace is not None:
            shutil.rmtree(created_workspace, ignore_errors=True)
        raise
    logger.info(
        "provisioned %s: %d kits in %s%s",
        project.name,
        len(result.kits),
        result.prod_dir,
        " (new root CA)" if result.ca_created else "",
    )
    return result


def _make_workspace(workspace: Path) -> Path | None:
    """Create ``workspace`` if needed; return the top-most folder created (to undo)."""
    missing: Path | None = None
    probe = workspace.absolute()
    while not probe.exists() and probe != probe.parent:
        missing = probe
        probe = probe.parent
    try:
        workspace.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProvisionError(
            f"workspace: {workspace}: cannot create: {exc.strerror or exc}"
        ) from None
    if not workspace.is_dir():
        raise ProvisionError(f"workspace: {workspace}: not a folder")
    return missing


def _staging(parent: Path, prefix: str) -> Path:
    try:
        return Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent))
    except OSError as exc:
        raise ProvisionError(f"workspace: {parent}: cannot write: {exc.strerror or exc}") from None


def _move_into_place(staging: Path, target: Path) -> None:
    if target.exists():
        raise ProvisionError(f"{target}: appeared while provisioning (another run?); run again")
    try:
        os.rename(staging, target)
    except OSError as exc:
        raise ProvisionError(
            f"{target}: cannot move kits into place: {exc.strerror or exc}"
        ) from None


def _first_run(
    project: Project, source: bytes, project_dir: Path, validity_days: int, ca_validity_days: int
) -> ProvisionResult:
    staging = _staging(project_dir.parent, f".{project.name}.")
    try:
        state = staging / STATE_DIR
        state.mkdir(mode=0o700)
        ca = CertificateAuthority.create(project.name, validity_days=ca_validity_days)
        save_ca(state, ca)
        prod_name = next_prod_name(project_dir)
        records = _build_prod(
            project, ca, staging / prod_name, prod_name, validity_days, None, project.participants
        )
        write_file(state / PROJECT_COPY, source, 0o600)
        write_ledger(state, records)
        _move_into_place(staging, project_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _result(project, project_dir / prod_name, ca_created=True)


def _add_prod(
    project: Project,
    source: bytes,
    project_dir: Path,
    validity_days: int,
    participants: tuple[Participant, ...],
) -> ProvisionResult:
    state = project_dir / STATE_DIR
    ca = load_ca(state)
    prod_name = next_prod_name(project_dir)
    staging = _staging(project_dir, f".{prod_name}.")
    try:
        crl = state / CRL_FILE
        crl_pem = crl.read_bytes() if crl.exists() else None
        records = _build_prod(project, ca, staging, prod_name, validity_days, crl_pem, participants)
        # Ledger first: if the rename then fails, a few unused serials are recorded,
        # which is harmless; the opposite order could lose track of live certificates.
        try:
            write_ledger(state, [*read_ledger(state), *records])
            atomic_write(state / PROJECT_COPY, source, 0o600)
        except OSError as exc:
            raise ProvisionError(f"{state}: cannot update: {exc.strerror or exc}") from None
        _move_into_place(staging, project_dir / prod_name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _result(project, project_dir / prod_name, ca_created=False, participants=participants)


def _result(
    project: Project,
    prod_dir: Path,
    *,
    ca_created: bool,
    participants: tuple[Participant, ...] | None = None,
) -> ProvisionResult:
    notes = tuple(str(note) for note in project.builders) + project.notes
    return ProvisionResult(
        project=project,
        prod_dir=prod_dir,
        kits={p.name: prod_dir / p.name for p in participants or project.participants},
        ca_created=ca_created,
        notes=notes,
    )


def _build_prod(
    project: Project,
    ca: CertificateAuthority,
    prod: Path,
    prod_name: str,
    validity_days: int,
    crl_pem: bytes | None,
    participants: tuple[Participant, ...],
) -> list[IssuedRecord]:
    prod.mkdir(exist_ok=True)
    records = []
    for participant in participants:
        try:
            records.append(
                _build_kit(
                    project, participant, ca, prod / participant.name, validity_days, crl_pem
                )
            )
        except OSError as exc:
            raise ProvisionError(
                f"{prod}: cannot write kit {participant.name}: {exc.strerror or exc}"
            ) from None
    return [
        IssuedRecord(
            serial=r.serial, name=r.name, type=r.type, prod=prod_name, not_after=r.not_after
        )
        for r in records
    ]


def _build_kit(
    project: Project,
    participant: Participant,
    ca: CertificateAuthority,
    kit: Path,
    validity_days: int,
    crl_pem: bytes | None,
) -> IssuedRecord:
    startup, local = kit / "startup", kit / "local"
    kit.mkdir()
    startup.mkdir()
    local.mkdir()

    issued = ca.issue(participant, validity_days=validity_days, kubernetes=project.kubernetes)
    prefix = "server" if participant.type == "server" else "client"
    files: Mapping[str, tuple[bytes | str, int]] = {
        "rootCA.pem": (ca.cert_pem, 0o644),
        f"{prefix}.crt": (issued.cert_pem, 0o644),
        f"{prefix}.key": (issued.key_pem, 0o600),
        config_file_name(participant.type): (
            _json(participant_config(project, participant)),
            0o644,
        ),
        **_scripts(participant.type),
    }
    for fname, (data, mode) in files.items():
        write_file(startup / fname, data, mode)
    sign_startup(startup, ca, project=project.name, name=participant.name)

    for fname, text in local_files(participant.type).items():
        write_file(local / fname, text)
    if participant.type in ("server", "client") and crl_pem is not None:
        write_file(local / CRL_FILE, crl_pem)
    if participant.type == "admin":
        (kit / "transfer").mkdir()
    write_file(kit / "readme.txt", readme_txt(project.name, participant.name, participant.type))
    return IssuedRecord(
        serial=issued.cert.serial_number,
        name=participant.name,
        type=participant.type,
        prod="",
        not_after=iso(issued.cert.not_valid_after_utc),
    )


def _scripts(participant_type: str) -> dict[str, tuple[bytes | str, int]]:
    if participant_type == "admin":
        return {"fl_admin.sh": (fl_admin_sh(), 0o755)}
    return {
        "start.sh": (start_sh(), 0o755),
        "sub_start.sh": (sub_start_sh(participant_type), 0o755),
        "stop_fl.sh": (stop_fl_sh(), 0o755),
    }


def _json(doc: object) -> str:
    return json.dumps(doc, indent=2) + "\n"
