"""A job's metadata: ``job.yml`` parsed into frozen dataclasses.

    spec = load_job_spec(Path("transfer/hello-tf2"))     # or a .zip of it
    spec.check_sites(["site-1", "site-2"])               # against the project

Every problem is a JobValidationError of the form ``job.yml: <field>: <problem>``.
Validation never runs user code: server hooks are checked to name a module
file inside ``app/``, not imported. The full format is in docs/jobs.md.
"""

from __future__ import annotations

import math
import re
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from shoal.errors import JobValidationError
from shoal.workflows import registry
from shoal.workflows.hooks import check_hook_file

__all__ = [
    "APP_DIR",
    "JOB_FILE",
    "ClientAppSpec",
    "JobSpec",
    "ServerAppSpec",
    "WorkflowSpec",
    "find_job_root",
    "load_job_spec",
    "parse_job_spec",
]

#: The metadata file at the root of a job folder.
JOB_FILE = "job.yml"
#: The folder shipped to the server's workflow process and to every site.
APP_DIR = "app"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_JOB_FILE_BYTES = 1024 * 1024
_TOP_KEYS = (
    "name",
    "min_clients",
    "sites",
    "workflow",
    "client",
    "server",
    "resources",
    "start_timeout_s",
)


@dataclass(frozen=True)
class WorkflowSpec:
    """The ``workflow:`` section."""

    #: A registered workflow (``shoal.workflows.registry``), e.g. ``"fedavg"``.
    name: str
    #: Its parameters as written (everything but ``name``); already validated
    #: by the workflow's parser.
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientAppSpec:
    """The ``client:`` section: what each site runs."""

    #: The training script, a path relative to ``app/`` (POSIX separators).
    script: str
    #: Command-line arguments passed to the script.
    args: tuple[str, ...] = ()
    #: Extra environment variables for the script.
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerAppSpec:
    """The optional ``server:`` section: hooks run by the workflow process."""

    #: ``"module:attr"``, ``() -> framework model``: initial weights, and the
    #: final model is also saved in the framework's native format.
    model: str | None = None
    #: ``"module:attr"``, ``(params, round) -> dict[str, float]`` on the new global model.
    evaluate: str | None = None
    #: ``"module:attr"``, ``() -> dict[str, ndarray]``: initial weights without a framework.
    initial_weights: str | None = None


@dataclass(frozen=True)
class JobSpec:
    """A validated ``job.yml``."""

    #: The job's name, ``[A-Za-z0-9][A-Za-z0-9._-]{0,63}``.
    name: str
    #: Fewest sites that must take part (and return valid results each round).
    min_clients: int
    workflow: WorkflowSpec
    client: ClientAppSpec
    server: ServerAppSpec = field(default_factory=ServerAppSpec)
    #: The sites that take part; ``None``: every connected site (at least ``min_clients``).
    sites: tuple[str, ...] | None = None
    #: Per-site requirements (``gpu: 1``, ...); informational.
    resources: Mapping[str, Any] = field(default_factory=dict)
    #: Seconds to wait for the sites at start before the job is ABANDONED.
    start_timeout_s: float = 300.0

    def check_sites(self, project_sites: Sequence[str]) -> None:
        """Refuse a job the project can never run (JobValidationError)."""
        known = set(project_sites)
        if self.sites is not None:
            unknown = [s for s in self.sites if s not in known]
            if unknown:
                raise JobValidationError(
                    f"job.yml: sites: {', '.join(unknown)} not in the project "
                    f"(project sites: {', '.join(sorted(known)) or 'none'})"
                )
        if self.min_clients > len(known):
            raise JobValidationError(
                f"job.yml: min_clients: {self.min_clients} is more than the "
                f"{len(known)} site(s) in the project"
            )

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON-able data (the shape of job.yml)."""
        out: dict[str, Any] = {
            "name": self.name,
            "min_clients": self.min_clients,
            "workflow": {"name": self.workflow.name, **dict(self.workflow.params)},
            "client": {
                "script": self.client.script,
                "args": list(self.client.args),
                "env": dict(self.client.env),
            },
            "server": {
                k: v
                for k, v in (
                    ("model", self.server.model),
                    ("evaluate", self.server.evaluate),
                    ("initial_weights", self.server.initial_weights),
                )
                if v is not None
            },
            "resources": dict(self.resources),
            "start_timeout_s": self.start_timeout_s,
        }
        if self.sites is not None:
            out["sites"] = list(self.sites)
        return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys instead of keeping the last."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if isinstance(key, (str, int, float, bool)) and key in seen:
            raise JobValidationError(f"job.yml: {key}: key appears more than once")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,  # type: ignore[arg-type]
)


def _err(where: str, problem: str) -> JobValidationError:
    return JobValidationError(f"job.yml: {where}: {problem}")


def _int(doc: Mapping[str, Any], key: str, *, minimum: int) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _err(key, f"required integer >= {minimum}, got {value!r}")
    return value


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _err(where, "must be a mapping with string keys")
    return value


def _hook(server: Mapping[str, Any], key: str, app_dir: Path) -> str | None:
    value = server.get(key)
    if value is None:
        return None
    try:
        check_hook_file(app_dir, value)
    except JobValidationError as exc:
        raise _err(f"server.{key}", str(exc)) from None
    return str(value)


def _scalar_str(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise _err(where, f"must be a string, got {value!r}")


def _client(doc: Mapping[str, Any], app_dir: Path) -> ClientAppSpec:
    if "client" not in doc:
        raise _err("client", "required section is missing")
    client = _mapping(doc["client"], "client")
    unknown = sorted(set(client) - {"script", "args", "env"})
    if unknown:
        raise _err(f"client.{unknown[0]}", "unknown key")
    script = client.get("script")
    if not isinstance(script, str) or not script:
        raise _err("client.script", "required path inside app/")
    pure = PurePosixPath(script)
    if "\\" in script or pure.is_absolute() or ".." in pure.parts or ":" in script:
        raise _err("client.script", f"{script!r} must be a relative path inside app/")
    target = app_dir / pure
    app_real = app_dir.resolve()
    if not target.is_file() or not target.resolve().is_relative_to(app_real):
        raise _err("client.script", f"{script!r} not found in app/")
    args_raw = client.get("args", [])
    if args_raw is None:
        args_raw = []
    if not isinstance(args_raw, list):
        raise _err("client.args", "must be a list of strings")
    args = tuple(_scalar_str(a, f"client.args[{i}]") for i, a in enumerate(args_raw))
    env: dict[str, str] = {}
    for key, value in _mapping(client.get("env"), "client.env").items():
        if not _ENV_RE.match(key):
            raise _err(f"client.env.{key}", "not a valid environment variable name")
        env[key] = _scalar_str(value, f"client.env.{key}")
    return ClientAppSpec(script=pure.as_posix(), args=args, env=env)


def _sites(doc: Mapping[str, Any], min_clients: int) -> tuple[str, ...] | None:
    raw = doc.get("sites")
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise _err("sites", "must be a non-empty list of site names")
    sites: list[str] = []
    for i, site in enumerate(raw):
        if not isinstance(site, str) or not site:
            raise _err(f"sites[{i}]", f"must be a site name, got {site!r}")
        if site in sites:
            raise _err("sites", f"{site!r} is listed twice")
        sites.append(site)
    if len(sites) < min_clients:
        raise _err("sites", f"{len(sites)} site(s) listed but min_clients is {min_clients}")
    return tuple(sites)


def parse_job_spec(doc: Any, app_dir: Path) -> JobSpec:
    """Validate an already-loaded job.yml document against its ``app/`` folder."""
    if not isinstance(doc, Mapping):
        raise JobValidationError("job.yml: must be a mapping of settings")
    unknown = [k for k in doc if k not in _TOP_KEYS]
    if unknown:
        raise _err(str(unknown[0]), f"unknown key (known: {', '.join(_TOP_KEYS)})")
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _err("name", f"required, [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}, got {name!r}")
    min_clients = _int(doc, "min_clients", minimum=1)
    sites = _sites(doc, min_clients)

    if "workflow" not in doc:
        raise _err("workflow", "required section is missing")
    wf = _mapping(doc["workflow"], "workflow")
    wf_name = wf.get("name")
    if not isinstance(wf_name, str):
        raise _err("workflow.name", f"required (known: {', '.join(registry.workflow_names())})")
    params = {k: v for k, v in wf.items() if k != "name"}
    try:
        registry.parse_params(wf_name, params)
    except JobValidationError as exc:
        if str(exc).startswith("job.yml:"):
            raise
        raise _err("workflow.name", str(exc)) from None

    client = _client(doc, app_dir)
    server_doc = _mapping(doc.get("server"), "server")
    unknown = sorted(set(server_doc) - {"model", "evaluate", "initial_weights"})
    if unknown:
        raise _err(f"server.{unknown[0]}", "unknown key (known: model, evaluate, initial_weights)")
    server = ServerAppSpec(
        model=_hook(server_doc, "model", app_dir),
        evaluate=_hook(server_doc, "evaluate", app_dir),
        initial_weights=_hook(server_doc, "initial_weights", app_dir),
    )
    if server.model and server.initial_weights:
        raise _err("server", "give model or initial_weights, not both")

    resources = dict(_mapping(doc.get("resources"), "resources"))
    timeout = doc.get("start_timeout_s", 300)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise _err("start_timeout_s", f"must be a number > 0, got {timeout!r}")

    spec = JobSpec(
        name=name,
        min_clients=min_clients,
        workflow=WorkflowSpec(name=wf_name, params=params),
        client=client,
        server=server,
        sites=sites,
        resources=resources,
        start_timeout_s=float(timeout),
    )
    registry.check_spec(wf_name, spec)
    return spec


def find_job_root(folder: Path) -> Path:
    """The folder holding job.yml: ``folder`` itself or its only sub-folder
    (so that zipping ``hello-tf2/`` or its contents both work)."""
    if (folder / JOB_FILE).is_file():
        return folder
    children = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if len(children) == 1 and children[0].is_dir() and (children[0] / JOB_FILE).is_file():
        return children[0]
    raise JobValidationError(f"{JOB_FILE}: not found at the root of the job")


def _load_folder(folder: Path) -> JobSpec:
    root = find_job_root(folder)
    job_file = root / JOB_FILE
    if job_file.is_symlink():
        raise JobValidationError(f"{JOB_FILE}: must be a regular file, not a link")
    if job_file.stat().st_size > _MAX_JOB_FILE_BYTES:
        raise JobValidationError(f"{JOB_FILE}: larger than {_MAX_JOB_FILE_BYTES} bytes")
    app_dir = root / APP_DIR
    if not app_dir.is_dir():
        raise JobValidationError(f"{APP_DIR}/: the job has no app folder")
    try:
        doc = yaml.load(job_file.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506
    except JobValidationError:
        raise
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        raise JobValidationError(f"{JOB_FILE}: not valid YAML: {exc}") from None
    return parse_job_spec(doc, app_dir)


def load_job_spec(path: Path) -> JobSpec:
    """Load and validate a job folder, or a zip of one (extracted safely to a
    temporary folder that is removed afterwards)."""
    from shoal.jobs.archive import safe_extract

    path = Path(path)
    if path.is_dir():
        return _load_folder(path)
    if path.is_file() and zipfile.is_zipfile(path):
        with tempfile.TemporaryDirectory(prefix="shoal-job-") as tmp:
            dest = Path(tmp) / "job"
            safe_extract(path, dest)
            return _load_folder(dest)
    if not path.exists():
        raise JobValidationError(f"{path}: no such job folder or archive")
    raise JobValidationError(f"{path}: not a job folder or a zip archive")
