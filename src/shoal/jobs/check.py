"""Check a job offline, as a submit would, and list every problem at once.

    report = check_job(Path("my-job"))          # a folder or a .zip of one
    if report.ok:
        print(report.summary())                 # my-job: OK: job 'my-job', fedavg, ...
    else:
        print("\\n".join(report.problems))       # one "job.yml: <field>: <problem>" per line

A folder goes the way ``submit_job`` sends it: packed (:func:`pack_job`), its
size checked, extracted as the server extracts it (:func:`safe_extract`), then
job.yml validated. :func:`load_job_spec` stops at the first problem; here each
section of job.yml is run through the same parser on its own, so a file with
three mistakes shows three lines. The full :func:`parse_job_spec` runs last,
every time: the report is clean exactly when a submit's validation would pass.
"""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from shoal.errors import JobValidationError
from shoal.jobs.archive import check_archive_size, pack_job, safe_extract
from shoal.jobs.spec import (
    _TOP_KEYS,
    APP_DIR,
    DEFAULT_REJOIN_GRACE_S,
    MAX_MIN_CLIENTS,
    ClientAppSpec,
    JobSpec,
    ServerAppSpec,
    WorkflowSpec,
    _check_tree,
    _client,
    _err,
    _filters,
    _int,
    _name,
    _read_job_file,
    _rejoin_grace,
    _resources,
    _server,
    _sites,
    _start_timeout,
    _tracking,
    _workflow,
    find_job_root,
    parse_job_spec,
)
from shoal.workflows import registry

__all__ = ["JobCheck", "check_job", "spec_problems"]

T = TypeVar("T")


@dataclass(frozen=True)
class JobCheck:
    """What :func:`check_job` found."""

    #: The folder or archive checked.
    path: Path
    #: Every problem found, one message each; empty when the job would be accepted.
    problems: tuple[str, ...]
    #: The validated job, when there is no problem.
    spec: JobSpec | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: ``my-job: OK: job 'my-job', fedavg (num_rounds 3), ...`` or the count."""
        if self.spec is None:
            return f"{self.path}: {len(self.problems)} problem(s)"
        spec = self.spec
        params = ", ".join(f"{k} {v}" for k, v in spec.workflow.params.items())
        hooks = ", ".join(
            f"{k} {v}"
            for k, v in (
                ("model", spec.server.model),
                ("initial_weights", spec.server.initial_weights),
                ("evaluate", spec.server.evaluate),
            )
            if v
        )
        sites = ", ".join(spec.sites) if spec.sites else "any"
        return (
            f"{self.path}: OK: job {spec.name!r}, {spec.workflow.name}"
            + (f" ({params})" if params else "")
            + f", min_clients {spec.min_clients}, sites {sites}, script {APP_DIR}/{spec.client.script}"
            + (f", server {hooks}" if hooks else "")
        )


def check_job(path: Path, *, project_sites: Sequence[str] | None = None) -> JobCheck:
    """Check the job folder or zip at ``path`` as a submit would; never raises on
    a bad job (its problems are the answer). ``project_sites``: also check
    ``sites`` and ``min_clients`` against the project's sites, as the server does."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="shoal-check-") as tmp:
        try:
            if path.is_dir():
                # What submit_job sends: the packed folder.
                archive = pack_job(path, Path(tmp) / "job.zip")
            elif path.is_file() and zipfile.is_zipfile(path):
                archive = path
            elif not path.exists():
                raise JobValidationError(f"{path}: no such job folder or archive")
            else:
                raise JobValidationError(f"{path}: not a job folder or a zip archive")
            check_archive_size(archive)
            try:
                safe_extract(archive, Path(tmp) / "job")
            except zipfile.BadZipFile as exc:
                raise JobValidationError(f"not a zip archive: {exc}") from None
            root = find_job_root(Path(tmp) / "job")
            doc = _read_job_file(root)
        except JobValidationError as exc:
            # The archive or the file itself: nothing further can be read.
            return JobCheck(path=path, problems=(str(exc),))
        problems = spec_problems(doc, root / APP_DIR, project_sites=project_sites)
        spec = None if problems else parse_job_spec(doc, root / APP_DIR)
    return JobCheck(path=path, problems=tuple(problems), spec=spec)


_FAILED: Any = object()


def spec_problems(
    doc: Any, app_dir: Path, *, project_sites: Sequence[str] | None = None
) -> list[str]:
    """Every problem of a loaded job.yml, one message each (those
    :func:`parse_job_spec` raises, the first of which it would raise); empty
    exactly when it accepts the document (and, given ``project_sites``,
    :meth:`JobSpec.check_sites` too)."""
    try:
        if not isinstance(doc, Mapping):
            raise JobValidationError("job.yml: must be a mapping of settings")
        # Bounds on the whole document come first: past them, nothing is read.
        _check_tree(doc)
    except JobValidationError as exc:
        return [str(exc)]
    found: list[str] = []

    def attempt(parse: Callable[[], T]) -> T:
        try:
            return parse()
        except JobValidationError as exc:
            if str(exc) not in found:
                found.append(str(exc))
            return _FAILED  # type: ignore[no-any-return]

    for key in doc:
        if key not in _TOP_KEYS:
            found.append(str(_err(str(key), f"unknown key (known: {', '.join(_TOP_KEYS)})")))
    name = attempt(lambda: _name(doc))
    min_clients = attempt(lambda: _int(doc, "min_clients", minimum=1, maximum=MAX_MIN_CLIENTS))
    # Without a valid min_clients, the list is still checked on its own.
    sites = attempt(lambda: _sites(doc, 1 if min_clients is _FAILED else min_clients))
    workflow = attempt(lambda: _workflow(doc))
    client = attempt(lambda: _client(doc, app_dir))
    server = attempt(lambda: _server(doc, app_dir))
    resources = attempt(lambda: _resources(doc))
    timeout = attempt(lambda: _start_timeout(doc))
    grace = attempt(lambda: _rejoin_grace(doc))
    filters = attempt(lambda: _filters(doc.get("filters"), app_dir))
    attempt(lambda: _tracking(doc.get("tracking")))

    # The checks on the whole job, on what parsed: a placeholder stands in for
    # a section already reported, and is never what a check reads (the
    # workflow's check reads server:, check_sites reads sites and min_clients).
    partial = JobSpec(
        name="job" if name is _FAILED else name,
        min_clients=1 if min_clients is _FAILED else min_clients,
        workflow=WorkflowSpec(name="") if workflow is _FAILED else workflow,
        client=ClientAppSpec(script="") if client is _FAILED else client,
        server=ServerAppSpec() if server is _FAILED else server,
        sites=None if sites is _FAILED else sites,
        resources={} if resources is _FAILED else resources,
        start_timeout_s=300.0 if timeout is _FAILED else timeout,
        rejoin_grace_s=DEFAULT_REJOIN_GRACE_S if grace is _FAILED else grace,
        filters={} if filters is _FAILED else filters,
    )
    if workflow is not _FAILED and server is not _FAILED:
        attempt(lambda: registry.check_spec(workflow.name, partial))
    if project_sites is not None and min_clients is not _FAILED and sites is not _FAILED:
        attempt(lambda: partial.check_sites(project_sites))
    # The authority: whatever the sections above do not cover (the stored
    # size, any section added later) is caught here, so the list is empty
    # only when a submit's parser accepts the job.
    attempt(lambda: parse_job_spec(doc, app_dir))
    return found
