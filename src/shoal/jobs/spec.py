"""A job's metadata: ``job.yml`` parsed into frozen dataclasses.

    spec = load_job_spec(Path("transfer/hello-tf2"))     # or a .zip of it
    spec.check_sites(["site-1", "site-2"])               # against the project

Every problem is a JobValidationError of the form ``job.yml: <field>: <problem>``.
Validation never runs user code: server hooks are checked to name a module
file inside ``app/``, not imported. The full format is in docs/jobs.md.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from shoal._yaml import AliasRefusedError, NoAliasLoader
from shoal.errors import JobValidationError
from shoal.filters import FilterSpec, parse_filters
from shoal.jobs.tracking import SITE_METRICS, MlflowSpec, TrackingSpec, WandbSpec
from shoal.taskmeta import RESERVED_TASK_META
from shoal.workflows import registry
from shoal.workflows.hooks import check_hook_file

__all__ = [
    "APP_DIR",
    "JOB_FILE",
    "ClientAppSpec",
    "JobSpec",
    "MlflowSpec",
    "ServerAppSpec",
    "TrackingSpec",
    "WandbSpec",
    "WorkflowSpec",
    "check_worker_env",
    "find_job_root",
    "load_job_spec",
    "parse_job_spec",
    "parse_tracking",
]

#: The metadata file at the root of a job folder.
JOB_FILE = "job.yml"
#: The folder shipped to the server's workflow process and to every site.
APP_DIR = "app"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_JOB_FILE_BYTES = 1024 * 1024

# Bounds on everything job.yml can hold. The file comes from any admin who
# may submit, and its contents are stored (JSON in SQLite), sent to every
# site and turned into a worker's command line and environment: each bound
# keeps one of those steps small whatever the file says.

#: Longest string anywhere in job.yml (a path, an argument, a variable's value).
MAX_STRING_CHARS = 16 * 1024
#: Most entries in any one list or mapping of job.yml.
MAX_ITEMS = 1_000
#: Deepest nesting of lists and mappings in job.yml (the document itself is 1).
MAX_DEPTH = 8
#: Most values (scalars, lists and mappings together) in the whole document.
MAX_NODES = 20_000
#: Largest integer magnitude anywhere in job.yml (SQLite's INTEGER is 64-bit).
MAX_INT = 2**63 - 1
#: Largest stored form of a spec (its JSON in the job store), in bytes.
MAX_SPEC_BYTES = 256 * 1024
#: ``resources``: deepest nesting below ``resources:`` itself.
MAX_RESOURCES_DEPTH = 3
#: ``resources``: most keys, counted at every level.
MAX_RESOURCES_KEYS = 64
#: ``resources``: largest JSON form, in bytes.
MAX_RESOURCES_BYTES = 16 * 1024
#: ``client.args``: most arguments.
MAX_ARGS = 256
#: ``client.env``: most variables.
MAX_ENV_VARS = 64
#: ``client.config``: largest JSON form, in bytes (it rides in every task's header).
MAX_CLIENT_CONFIG_BYTES = 64 * 1024
#: ``min_clients``: largest value (no project has more sites).
MAX_MIN_CLIENTS = 10_000
#: ``start_timeout_s``: longest wait, 30 days.
MAX_START_TIMEOUT_S = 30 * 24 * 3600.0
#: ``rejoin_grace_s``: default (seconds a round waits for a site that left it).
DEFAULT_REJOIN_GRACE_S = 15.0
#: ``rejoin_grace_s``: longest, one hour.
MAX_REJOIN_GRACE_S = 3600.0

# Worker environment variables a job may not set: they make the dynamic
# loader or an interpreter load code of the job's choosing before (or
# instead of) the job's own script, in every process the worker starts, or
# they are the daemon's own settings. Compared upper-cased.
_ENV_DENIED_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "TMPDIR",
        "TMP",
        "TEMP",
        "SHELL",
        "BASH_ENV",
        "ENV",
        "IFS",
        "CDPATH",
        "PS4",
        "PROMPT_COMMAND",
        "PERL5LIB",
        "PERLLIB",
        "PERL5OPT",
        "RUBYLIB",
        "RUBYOPT",
        "NODE_OPTIONS",
        "NODE_PATH",
        "CLASSPATH",
        "JAVA_TOOL_OPTIONS",
        "JDK_JAVA_OPTIONS",
        "_JAVA_OPTIONS",
        "LUA_INIT",
        "LUA_PATH",
        "LUA_CPATH",
        "TCLLIBPATH",
        "R_PROFILE",
        "R_PROFILE_USER",
        "R_ENVIRON",
        "R_ENVIRON_USER",
        "GCONV_PATH",
        "GLIBC_TUNABLES",
        "LOCPATH",
        "NLSPATH",
        "HOSTALIASES",
        "RESOLV_HOST_CONF",
        "OPENSSL_CONF",
        "OPENSSL_ENGINES",
        "OPENSSL_MODULES",
    }
)
_ENV_DENIED_PREFIXES = ("LD_", "DYLD_", "PYTHON", "SHOAL_", "MALLOC_")


def check_worker_env(env: Mapping[str, Any]) -> None:
    """Refuse environment variables a job may not give its worker (JobValidationError).

        check_worker_env({"OMP_NUM_THREADS": "4"})   # fine
        check_worker_env({"LD_PRELOAD": "/tmp/x.so"})  # JobValidationError

    Refused: names that are not ``[A-Za-z_][A-Za-z0-9_]*``; loader and
    interpreter hooks (``LD_*``, ``DYLD_*``, ``PYTHON*``, ``MALLOC_*``,
    ``PATH``, ``HOME``, ``TMPDIR``, ``BASH_ENV``, ``NODE_OPTIONS``, ... see
    docs/jobs.md); the daemon's own ``SHOAL_*``; values that are not strings,
    hold a NUL or pass :data:`MAX_STRING_CHARS`; more than
    :data:`MAX_ENV_VARS` variables. Everything else is allowed. The site
    daemon applies it again before it starts a worker.
    """
    if not isinstance(env, Mapping):
        raise _err("client.env", "must be a mapping of variable names to strings")
    if len(env) > MAX_ENV_VARS:
        raise _err("client.env", f"{len(env)} variables, more than the limit of {MAX_ENV_VARS}")
    for name, value in env.items():
        shown = name if isinstance(name, str) and len(name) <= 128 else repr(name)[:128]
        where = f"client.env.{shown}"
        if not isinstance(name, str) or not _ENV_RE.match(name) or len(name) > 128:
            raise _err(where, "not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
        upper = name.upper()
        if upper in _ENV_DENIED_NAMES or upper.startswith(_ENV_DENIED_PREFIXES):
            raise _err(
                where,
                f"{name} may not be set by a job (loader, interpreter or shoal "
                "variables are refused; see docs/jobs.md)",
            )
        if not isinstance(value, str):
            raise _err(where, f"must be a string, got {type(value).__name__}")
        if "\x00" in value:
            raise _err(where, "value holds a NUL character")
        if len(value) > MAX_STRING_CHARS:
            raise _err(where, f"value is {len(value)} characters, more than {MAX_STRING_CHARS}")


def _check_tree(doc: Any) -> None:
    """Bound the whole document before any field is read: depth, sizes, numbers.

    Every value is visited once; the node budget also stops a document built
    in Python with shared references from being walked exponentially.
    """
    budget = [MAX_NODES]

    def walk(value: Any, where: str, depth: int) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise _err(where or "(document)", f"more than {MAX_NODES} values in job.yml")
        if depth > MAX_DEPTH:
            raise _err(where, f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, str):
            if len(value) > MAX_STRING_CHARS:
                raise _err(
                    where, f"string of {len(value)} characters, more than {MAX_STRING_CHARS}"
                )
            if "\x00" in value:
                raise _err(where, "string holds a NUL character")
        elif isinstance(value, bool) or value is None:
            pass
        elif isinstance(value, int):
            if abs(value) > MAX_INT:
                raise _err(where, f"integer out of range (at most {MAX_INT} in magnitude)")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise _err(where, f"must be a finite number, got {value!r}")
        elif isinstance(value, Mapping):
            if len(value) > MAX_ITEMS:
                raise _err(where, f"{len(value)} entries, more than {MAX_ITEMS}")
            for key, item in value.items():
                shown = key if isinstance(key, str) and len(key) <= 128 else repr(key)[:128]
                if isinstance(key, str) and len(key) > MAX_STRING_CHARS:
                    raise _err(where or "(document)", "a key is longer than the limit")
                walk(item, f"{where}.{shown}" if where else str(shown), depth + 1)
        elif isinstance(value, (list, tuple)):
            if len(value) > MAX_ITEMS:
                raise _err(where, f"{len(value)} items, more than {MAX_ITEMS}")
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]", depth + 1)
        else:
            raise _err(where, f"unsupported value of type {type(value).__name__}")

    walk(doc, "", 1)


def _check_resources(resources: Mapping[str, Any]) -> None:
    keys = 0

    def walk(value: Any, where: str, depth: int) -> None:
        nonlocal keys
        if depth > MAX_RESOURCES_DEPTH:
            raise _err(where, f"nested deeper than {MAX_RESOURCES_DEPTH} levels below resources")
        items: Any = ()
        if isinstance(value, Mapping):
            keys += len(value)
            if keys > MAX_RESOURCES_KEYS:
                raise _err("resources", f"more than {MAX_RESOURCES_KEYS} keys")
            items = ((f"{where}.{k}", v) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
        for sub, item in items:
            walk(item, sub, depth + 1)

    for key, value in resources.items():
        walk(value, f"resources.{key}", 1)
    keys += len(resources)
    if keys > MAX_RESOURCES_KEYS:
        raise _err("resources", f"more than {MAX_RESOURCES_KEYS} keys")
    size = len(json.dumps(dict(resources)))
    if size > MAX_RESOURCES_BYTES:
        raise _err("resources", f"{size} bytes as JSON, more than {MAX_RESOURCES_BYTES}")


_TOP_KEYS = (
    "name",
    "min_clients",
    "sites",
    "workflow",
    "client",
    "server",
    "resources",
    "start_timeout_s",
    "rejoin_grace_s",
    "filters",
    "tracking",
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
    #: Client configuration: JSON values merged into every task's meta
    #: (``FLModel.meta``), e.g. ``{"lr": 0.01, "local_epochs": 2}``.
    config: Mapping[str, Any] = field(default_factory=dict)


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
    #: Seconds a round stays open, once, for a site that left during it (a
    #: daemon restart, a cut session) before it goes on without the site.
    rejoin_grace_s: float = DEFAULT_REJOIN_GRACE_S
    #: Filters by point (``shoal.filters``: task_in, result_out, result_in, model_out).
    filters: Mapping[str, tuple[FilterSpec, ...]] = field(default_factory=dict)
    #: Experiment tracking (TensorBoard, MLflow, W&B).
    tracking: TrackingSpec = field(default_factory=TrackingSpec)

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
                **({"config": dict(self.client.config)} if self.client.config else {}),
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
        if self.rejoin_grace_s != DEFAULT_REJOIN_GRACE_S:
            out["rejoin_grace_s"] = self.rejoin_grace_s
        if self.tracking != TrackingSpec():
            out["tracking"] = self.tracking.to_dict()
        if self.filters:
            out["filters"] = {
                point: [{"filter": f.name, "args": dict(f.args)} for f in specs]
                for point, specs in self.filters.items()
            }
        return out


class _UniqueKeyLoader(NoAliasLoader):
    """A loader that refuses anchors, aliases and duplicate mapping keys (instead
    of keeping the last)."""


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


def _int(doc: Mapping[str, Any], key: str, *, minimum: int, maximum: int) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:40]}..."
        raise _err(key, f"required integer in {minimum}..{maximum}, got {shown}")
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
    unknown = sorted(set(client) - {"script", "args", "env", "config"})
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
    if len(args_raw) > MAX_ARGS:
        raise _err("client.args", f"{len(args_raw)} arguments, more than the limit of {MAX_ARGS}")
    args = tuple(_scalar_str(a, f"client.args[{i}]") for i, a in enumerate(args_raw))
    env: dict[str, str] = {}
    for key, value in _mapping(client.get("env"), "client.env").items():
        if not _ENV_RE.match(key):
            raise _err(f"client.env.{key}", "not a valid environment variable name")
        env[key] = _scalar_str(value, f"client.env.{key}")
    check_worker_env(env)
    config = _client_config(client.get("config"))
    return ClientAppSpec(script=pure.as_posix(), args=args, env=env, config=config)


def _client_config(raw: Any) -> dict[str, Any]:
    config = dict(_mapping(raw, "client.config"))
    reserved = sorted(set(config) & RESERVED_TASK_META)
    if reserved:
        raise _err(
            f"client.config.{reserved[0]}",
            f"reserved for the task's own meta ({', '.join(sorted(RESERVED_TASK_META))})",
        )
    size = len(json.dumps(config))
    if size > MAX_CLIENT_CONFIG_BYTES:
        raise _err("client.config", f"{size} bytes as JSON, more than {MAX_CLIENT_CONFIG_BYTES}")
    return config


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


def _filters(raw: Any, app_dir: Path) -> dict[str, tuple[FilterSpec, ...]]:
    try:
        filters = parse_filters(raw, where="filters")
    except JobValidationError as exc:
        raise JobValidationError(f"job.yml: {exc}") from None
    for point, specs in filters.items():
        for i, f in enumerate(specs):
            if ":" in f.name:
                try:
                    check_hook_file(app_dir, f.name)
                except JobValidationError as exc:
                    raise _err(f"filters.{point}[{i}]", str(exc)) from None
    return filters


def _keys(section: Mapping[str, Any], where: str, known: Sequence[str]) -> None:
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise _err(f"{where}.{unknown[0]}", f"unknown key (known: {', '.join(known)})")


def _opt_str(section: Mapping[str, Any], key: str, where: str) -> str | None:
    value = section.get(key)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise _err(f"{where}.{key}", f"must be a non-empty string, got {value!r}")
    return value


def _flag(section: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = section.get(key, default)
    if not isinstance(value, bool):
        raise _err(f"{where}.{key}", f"must be true or false, got {value!r}")
    return value


def _tracking_uri(value: Any) -> str:
    where = "tracking.mlflow.tracking_uri"
    if not isinstance(value, str) or not value.strip():
        raise _err(where, "required: a path, sqlite:///..., or http(s)://host:port")
    scheme, sep, rest = value.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        # job.yml is stored, shown to admins and sent to every site.
        raise _err(
            where,
            "holds credentials (user:password@): give them in the environment "
            "(MLFLOW_TRACKING_USERNAME/PASSWORD, see docs/observability.md)",
        )
    return value


def _tracking(raw: Any) -> TrackingSpec:
    if raw is None:
        return TrackingSpec()
    doc = _mapping(raw, "tracking")
    _keys(doc, "tracking", ("site_metrics", "tensorboard", "mlflow", "wandb"))
    site_metrics = doc.get("site_metrics", "server")
    if site_metrics not in SITE_METRICS:
        raise _err(
            "tracking.site_metrics", f"one of {', '.join(SITE_METRICS)}, got {site_metrics!r}"
        )
    mlflow = wandb = None
    if doc.get("mlflow") is not None:
        m = _mapping(doc["mlflow"], "tracking.mlflow")
        where = "tracking.mlflow"
        _keys(m, where, ("tracking_uri", "experiment", "run_name", "tags", "log_model"))
        tags = {
            k: _scalar_str(v, f"{where}.tags.{k}")
            for k, v in _mapping(m.get("tags"), f"{where}.tags").items()
        }
        mlflow = MlflowSpec(
            tracking_uri=_tracking_uri(m.get("tracking_uri")),
            experiment=_opt_str(m, "experiment", where),
            run_name=_opt_str(m, "run_name", where),
            tags=tags,
            log_model=_flag(m, "log_model", where, True),
        )
    if doc.get("wandb") is not None:
        w = _mapping(doc["wandb"], "tracking.wandb")
        where = "tracking.wandb"
        _keys(w, where, ("project", "entity", "mode", "dir", "tags", "log_model"))
        project = _opt_str(w, "project", where)
        if project is None:
            raise _err(f"{where}.project", "required: the W&B project to log to")
        mode = w.get("mode", "online")
        if mode not in ("online", "offline"):
            raise _err(f"{where}.mode", f"online or offline, got {mode!r}")
        tags_raw = w.get("tags") or []
        if not isinstance(tags_raw, list):
            raise _err(f"{where}.tags", "must be a list of strings")
        wandb = WandbSpec(
            project=project,
            entity=_opt_str(w, "entity", where),
            mode=mode,
            dir=_opt_str(w, "dir", where),
            tags=tuple(_scalar_str(t, f"{where}.tags[{i}]") for i, t in enumerate(tags_raw)),
            log_model=_flag(w, "log_model", where, True),
        )
    return TrackingSpec(
        site_metrics=site_metrics,
        tensorboard=_flag(doc, "tensorboard", "tracking", True),
        mlflow=mlflow,
        wandb=wandb,
    )


def parse_tracking(raw: Any) -> TrackingSpec:
    """A ``tracking:`` section, or its :meth:`TrackingSpec.to_dict` form (a
    worker's configuration), checked as job.yml's is."""
    return _tracking(raw)


def _name(doc: Mapping[str, Any]) -> str:
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _err("name", f"required, [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}, got {name!r}")
    return name


def _workflow(doc: Mapping[str, Any]) -> WorkflowSpec:
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
    return WorkflowSpec(name=wf_name, params=params)


def _server(doc: Mapping[str, Any], app_dir: Path) -> ServerAppSpec:
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
    return server


def _resources(doc: Mapping[str, Any]) -> dict[str, Any]:
    resources = dict(_mapping(doc.get("resources"), "resources"))
    _check_resources(resources)
    return resources


def _start_timeout(doc: Mapping[str, Any]) -> float:
    timeout = doc.get("start_timeout_s", 300)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise _err("start_timeout_s", f"must be a number > 0, got {timeout!r}")
    if timeout > MAX_START_TIMEOUT_S:
        raise _err(
            "start_timeout_s", f"{timeout!r} is more than the limit of {MAX_START_TIMEOUT_S:.0f} s"
        )
    return float(timeout)


def _rejoin_grace(doc: Mapping[str, Any]) -> float:
    grace = doc.get("rejoin_grace_s", DEFAULT_REJOIN_GRACE_S)
    if (
        isinstance(grace, bool)
        or not isinstance(grace, (int, float))
        or not math.isfinite(grace)
        or not 0 <= grace <= MAX_REJOIN_GRACE_S
    ):
        raise _err(
            "rejoin_grace_s", f"must be a number from 0 to {MAX_REJOIN_GRACE_S:.0f}, got {grace!r}"
        )
    return float(grace)


def parse_job_spec(doc: Any, app_dir: Path) -> JobSpec:
    """Validate an already-loaded job.yml document against its ``app/`` folder."""
    if not isinstance(doc, Mapping):
        raise JobValidationError("job.yml: must be a mapping of settings")
    _check_tree(doc)
    unknown = [k for k in doc if k not in _TOP_KEYS]
    if unknown:
        raise _err(str(unknown[0]), f"unknown key (known: {', '.join(_TOP_KEYS)})")
    name = _name(doc)
    min_clients = _int(doc, "min_clients", minimum=1, maximum=MAX_MIN_CLIENTS)
    sites = _sites(doc, min_clients)

    workflow = _workflow(doc)
    client = _client(doc, app_dir)
    server = _server(doc, app_dir)
    resources = _resources(doc)
    timeout = _start_timeout(doc)
    grace = _rejoin_grace(doc)

    spec = JobSpec(
        name=name,
        min_clients=min_clients,
        workflow=workflow,
        client=client,
        server=server,
        sites=sites,
        resources=resources,
        start_timeout_s=timeout,
        rejoin_grace_s=grace,
        filters=_filters(doc.get("filters"), app_dir),
        tracking=_tracking(doc.get("tracking")),
    )
    registry.check_spec(workflow.name, spec)
    size = len(json.dumps(spec.to_dict()))
    if size > MAX_SPEC_BYTES:
        raise _err("(document)", f"{size} bytes once stored, more than {MAX_SPEC_BYTES}")
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
    return parse_job_spec(_read_job_file(root), root / APP_DIR)


def _read_job_file(root: Path) -> Any:
    """job.yml of the job at ``root``, loaded (not yet validated); the job has an app/."""
    job_file = root / JOB_FILE
    if job_file.is_symlink():
        raise JobValidationError(f"{JOB_FILE}: must be a regular file, not a link")
    if job_file.stat().st_size > _MAX_JOB_FILE_BYTES:
        raise JobValidationError(f"{JOB_FILE}: larger than {_MAX_JOB_FILE_BYTES} bytes")
    app_dir = root / APP_DIR
    if not app_dir.is_dir():
        raise JobValidationError(f"{APP_DIR}/: the job has no app folder")
    return _load_job_text(job_file.read_bytes())


def _load_job_text(raw: bytes) -> Any:
    """job.yml's bytes, loaded as YAML (not yet validated)."""
    try:
        doc = yaml.load(raw.decode("utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506
    except JobValidationError:
        raise
    except AliasRefusedError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else "?"
        raise JobValidationError(f"{JOB_FILE}: line {line}: {exc.problem}") from None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        raise JobValidationError(f"{JOB_FILE}: not valid YAML: {exc}") from None
    return doc


def read_job_file_in_zip(package: Path) -> Any:
    """job.yml of a job archive, loaded (not yet validated), read in memory:
    nothing of the archive is written out, so a site can judge a job before
    any of its code is on disk. job.yml lies where :func:`find_job_root`
    looks for it once unpacked: at the root, or in the only top folder."""
    try:
        with zipfile.ZipFile(package) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            member = infos.get(JOB_FILE)
            if member is None:
                tops = {n.split("/", 1)[0] for n in infos if not n.startswith(".")}
                only = next(iter(tops)) if len(tops) == 1 else ""
                member = infos.get(f"{only}/{JOB_FILE}") if only else None
            if member is None or member.is_dir():
                raise JobValidationError(f"{JOB_FILE}: not found at the root of the job")
            if member.file_size > _MAX_JOB_FILE_BYTES:
                raise JobValidationError(f"{JOB_FILE}: larger than {_MAX_JOB_FILE_BYTES} bytes")
            with zf.open(member) as f:
                raw = f.read(_MAX_JOB_FILE_BYTES + 1)  # a header may lie about the size
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:
        raise JobValidationError(f"not a readable job archive: {exc}") from None
    if len(raw) > _MAX_JOB_FILE_BYTES:
        raise JobValidationError(f"{JOB_FILE}: larger than {_MAX_JOB_FILE_BYTES} bytes")
    return _load_job_text(raw)


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
