"""What the admin API answers, as typed values decoded once from the server's JSON.

:class:`~shoal.admin.session.AdminSession` turns each reply into one of these
at the edge, so the rest of the code (console, CLI, demo, a dashboard) reads
attributes instead of digging in dicts::

    status = session.check_status()
    up = [site.name for site in status.sites if site.connected]
    meta = session.wait_for_job(job_id)
    if meta.status == "FINISHED:COMPLETED": ...

A reply that lacks a field the client relies on, or holds the wrong kind of
value, raises :class:`~shoal.errors.TransportError` naming the command and the
field (``check_status reply: field 'sites[0].name' is missing``). Fields only
shown to a person are optional: ``None`` (or empty) when the server did not
send them.

Each value keeps the reply it was decoded from: :meth:`to_dict` gives it back
exactly as the server sent it (keys, order, fields this version does not
know), which is what ``shoal admin --json`` prints.
"""

from __future__ import annotations

import copy
from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from shoal.errors import TransportError

__all__ = [
    "AuditEvents",
    "CrossSiteEval",
    "FederationStatus",
    "JobErrors",
    "JobMeta",
    "JobStats",
    "JobSummary",
    "ServerStatus",
    "SiteProgress",
    "SiteStatus",
    "SysInfo",
    "jobs_from_json",
    "reply_field",
]

_T = TypeVar("_T")

_KIND = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _kind_of(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return _KIND.get(type(value), type(value).__name__)


class _Fields:
    """Reads one JSON object of a reply; every error names the command and the field."""

    def __init__(self, data: object, command: str, path: str = "") -> None:
        self.command = command
        self.path = path
        if not isinstance(data, Mapping):
            got = _kind_of(data)
            if not path:
                raise TransportError(f"{command} reply: expected an object, got {got}")
            raise self._error(f"is {got}, expected an object", path)
        self.data: Mapping[str, Any] = data

    def _name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _error(self, what: str, name: str) -> TransportError:
        return TransportError(f"{self.command} reply: field '{name}' {what}")

    def nested(self, key: str, value: object) -> _Fields:
        return _Fields(value, self.command, self._name(key))

    def required(self, key: str, kind: type[_T]) -> _T:
        if key not in self.data:
            raise self._error("is missing", self._name(key))
        value = self.data[key]
        if value is None:
            raise self._error(f"is null, expected {_KIND[kind]}", self._name(key))
        return self._check(key, value, kind)

    def optional(self, key: str, kind: type[_T]) -> _T | None:
        value = self.data.get(key)
        return None if value is None else self._check(key, value, kind)

    def strings(self, key: str) -> tuple[str, ...]:
        """A list of strings; absent or null reads as empty."""
        value = self.data.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._error(f"is {_kind_of(value)}, expected a list of strings", self._name(key))
        return tuple(value)

    def objects(self, key: str) -> list[_Fields]:
        """A list of objects; absent or null reads as empty."""
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self._error(f"is {_kind_of(value)}, expected a list", self._name(key))
        return [self.nested(f"{key}[{i}]", v) for i, v in enumerate(value)]

    def mapping(self, key: str) -> dict[str, Any]:
        """A JSON object kept as it is; absent or null reads as empty."""
        value = self.data.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self._error(f"is {_kind_of(value)}, expected an object", self._name(key))
        return dict(value)

    def _check(self, key: str, value: object, kind: type[_T]) -> _T:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)  # type: ignore[return-value]  # JSON has one number type
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self._error(f"is {_kind_of(value)}, expected {_KIND[kind]}", self._name(key))
        return value


def reply_field(reply: object, command: str, key: str) -> str:
    """One string field of a small reply (``submit_job``'s ``job_id``, ``get_log``'s ``log``)."""
    return _Fields(reply, command).required(key, str)


def _plain(value: Any) -> Any:
    """A field's value as JSON data (for values built in code, not decoded)."""
    if isinstance(value, _ReplyView):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


class _ReplyView:
    """The reply a value was decoded from, and a read-only mapping view of it.

    ``to_dict()`` is the API. The mapping methods (``value["status"]``,
    ``.get``, ``in``, iteration) are a **transition aid** for code written
    against the dict answers of earlier versions (shoal's own tests still
    subscript); new code reads attributes.
    """

    _reply: Mapping[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        """The reply exactly as the server sent it (a copy); for values built in
        code, their fields as JSON data."""
        if self._reply is not None:
            return copy.deepcopy(dict(self._reply))
        own = fields(self)  # type: ignore[arg-type]  # every subclass is a dataclass
        return {f.name: _plain(getattr(self, f.name)) for f in own if f.name != "_reply"}

    def _view(self) -> Mapping[str, Any]:
        return self._reply if self._reply is not None else self.to_dict()

    def __getitem__(self, key: str) -> Any:
        return self._view()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._view().get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._view()

    def __iter__(self) -> Iterator[str]:
        return iter(self._view())

    def __len__(self) -> int:
        return len(self._view())

    def keys(self) -> KeysView[str]:
        return self._view().keys()

    def values(self) -> ValuesView[Any]:
        return self._view().values()

    def items(self) -> ItemsView[str, Any]:
        return self._view().items()


# --- check_status -----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ServerStatus(_ReplyView):
    """The server's line of ``check_status``."""

    name: str
    """The server's name, as in its certificate (e.g. ``server1``)."""
    status: str
    """``started`` while it serves."""
    project: str | None = None
    """The project the server belongs to."""
    start_time: str | None = None
    """When it started, ISO 8601 in UTC."""
    uptime_s: float | None = None
    """Seconds since it started."""
    running_jobs: tuple[str, ...] = ()
    """Ids of the jobs running now that this admin may see."""
    ports: Mapping[str, Any] = field(default_factory=dict)
    """Listening ports by service (``fed``, ``admin``, ``health``)."""
    version: str | None = None
    """The server's shoal version."""
    certificate_warnings: tuple[str, ...] = ()
    """The server's certificate or the project CA ends within 30 days: one line each."""
    cert_not_after: str | None = None
    """When the server's certificate expires, ISO 8601 in UTC."""
    _reply: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def _decode(cls, f: _Fields) -> ServerStatus:
        return cls(
            name=f.required("name", str),
            status=f.required("status", str),
            project=f.optional("project", str),
            start_time=f.optional("start_time", str),
            uptime_s=f.optional("uptime_s", float),
            running_jobs=f.strings("running_jobs"),
            ports=f.mapping("ports"),
            version=f.optional("version", str),
            certificate_warnings=f.strings("certificate_warnings"),
            cert_not_after=f.optional("cert_not_after", str),
            _reply=f.data,
        )


@dataclass(frozen=True, kw_only=True)
class SiteStatus(_ReplyView):
    """One site of ``check_status``: every site of the project, connected or not."""

    name: str
    """The site's name (e.g. ``site-1``)."""
    connected: bool
    """Whether its daemon holds a connection to the server now."""
    org: str | None = None
    """The site's organisation; empty for a site that never connected."""
    address: str | None = None
    """The peer address of its connection; ``None`` when not connected."""
    last_heartbeat_s_ago: float | None = None
    """Seconds since its last heartbeat; ``None`` when not connected."""
    connected_since: str | None = None
    """When its connection opened, ISO 8601 in UTC."""
    running_jobs: tuple[str, ...] = ()
    """Ids of the jobs it runs now that this admin may see."""
    certificate_warnings: tuple[str, ...] = ()
    """The site's certificate or the project CA ends within 30 days (as the
    site said when it connected)."""
    shoal_version: str | None = None
    """The site's shoal version; ``None`` when not connected."""
    cert_not_after: str | None = None
    """When the certificate of its connection expires, ISO 8601 in UTC."""
    policy: Mapping[str, Any] = field(default_factory=dict)
    """The site policy it last published (``shoal.client.policy.SitePolicy.summary``:
    who and what it runs, its caps, the file's ``sha256``); empty when it
    published none since the server started."""
    _reply: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def _decode(cls, f: _Fields) -> SiteStatus:
        return cls(
            name=f.required("name", str),
            connected=f.required("connected", bool),
            org=f.optional("org", str),
            address=f.optional("address", str),
            last_heartbeat_s_ago=f.optional("last_heartbeat_s_ago", float),
            connected_since=f.optional("connected_since", str),
            running_jobs=f.strings("running_jobs"),
            certificate_warnings=f.strings("certificate_warnings"),
            shoal_version=f.optional("shoal_version", str),
            cert_not_after=f.optional("cert_not_after", str),
            policy=f.mapping("policy"),
            _reply=f.data,
        )


@dataclass(frozen=True, kw_only=True)
class FederationStatus(_ReplyView):
    """``check_status``: the server and every site of the project."""

    server: ServerStatus
    """The server's state."""
    sites: tuple[SiteStatus, ...]
    """Every site of the project, by name."""
    _reply: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: object) -> FederationStatus:
        f = _Fields(data, "check_status")
        if "server" not in f.data:
            raise f._error("is missing", "server")
        if "sites" not in f.data:
            raise f._error("is missing", "sites")
        return cls(
            server=ServerStatus._decode(f.nested("server", f.data["server"])),
            sites=tuple(SiteStatus._decode(s) for s in f.objects("sites")),
            _reply=f.data,
        )

    @property
    def connected(self) -> tuple[SiteStatus, ...]:
        """The sites connected now."""
        return tuple(s for s in self.sites if s.connected)

    def only_sites(self, names: set[str] | frozenset[str]) -> FederationStatus:
        """The same status with only the named sites (in the server's order)."""
        sites = tuple(s for s in self.sites if s.name in names)
        reply = {**self.to_dict(), "sites": [s.to_dict() for s in sites]}
        return FederationStatus(server=self.server, sites=sites, _reply=reply)


# --- jobs -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class JobSummary(_ReplyView):
    """One job as ``list_jobs`` shows it."""

    job_id: str
    """The job's id (a UUID); a unique prefix of it works in every command."""
    name: str
    """The job's name, from its folder or ``meta.json``."""
    status: str
    """``SUBMITTED``, ``RUNNING`` or ``FINISHED:*`` (see :mod:`shoal.jobstatus`)."""
    submit_time: str | None = None
    """When it was submitted, ISO 8601 in UTC."""
    start_time: str | None = None
    """When it last started running; ``None`` before that."""
    end_time: str | None = None
    """When it finished; ``None`` before that."""
    run_duration_s: float | None = None
    """Seconds from start to end (or to now while running); ``None`` before it starts."""
    submitter: str | None = None
    """Who submitted it (the admin's name)."""
    submitter_org: str | None = None
    """The submitter's organisation."""
    sites: tuple[str, ...] = ()
    """The sites it runs on."""
    current_round: int | None = None
    """The last round reached; ``None`` before the first."""
    num_rounds: int | None = None
    """How many rounds the workflow runs, when it says."""
    error: str | None = None
    """Why it failed or was aborted; ``None`` otherwise."""
    attempts: int | None = None
    """How many times it was started (a server restart resumes it)."""
    dp_epsilon: float | None = None
    """The ε its differential privacy has spent so far (``dp_fedavg``), at
    the job's δ; ``None`` for a job without it."""
    _reply: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: object, *, command: str = "list_jobs") -> JobSummary:
        return cls(**cls._summary_fields(_Fields(data, command)))

    @staticmethod
    def _summary_fields(f: _Fields) -> dict[str, Any]:
        return {
            "job_id": f.required("job_id", str),
            "name": f.required("name", str),
            "status": f.required("status", str),
            "submit_time": f.optional("submit_time", str),
            "start_time": f.optional("start_time", str),
            "end_time": f.optional("end_time", str),
            "run_duration_s": f.optional("run_duration_s", float),
            "submitter": f.optional("submitter", str),
            "submitter_org": f.optional("submitter_org", str),
            "sites": f.strings("sites"),
            "current_round": f.optional("current_round", int),
            "num_rounds": f.optional("num_rounds", int),
            "error": f.optional("error", str),
            "attempts": f.optional("attempts", int),
            "dp_epsilon": f.optional("dp_epsilon", float),
            "_reply": f.data,
        }


def jobs_from_json(data: object) -> list[JobSummary]:
    """``list_jobs``: the jobs this admin may see, oldest first."""
    if not isinstance(data, list):
        raise TransportError(f"list_jobs reply: expected a list, got {_kind_of(data)}")
    return [
        JobSummary(**JobSummary._summary_fields(_Fields(j, "list_jobs", f"[{i}]")))
        for i, j in enumerate(data)
    ]


@dataclass(frozen=True, kw_only=True)
class JobMeta(JobSummary):
    """``get_job_meta`` (and what ``wait_for_job`` returns): the summary, its
    definition and the results stored so far."""

    spec: Mapping[str, Any] = field(default_factory=dict)
    """The job's definition as submitted (``meta.json``/``job.yml``)."""
    results: tuple[str, ...] = ()
    """Result files under the run folder, e.g. ``models/global_final.safetensors``."""
    package_sha256: str | None = None
    """SHA-256 of the job's archive as stored (what a clone's submitter signs)."""
    signature: Mapping[str, Any] | None = None
    """Its submitter's signature (``shoal.jobs.signature``); ``None`` for a job
    from before signed jobs."""

    @classmethod
    def from_json(cls, data: object, *, command: str = "get_job_meta") -> JobMeta:
        f = _Fields(data, command)
        return cls(
            **cls._summary_fields(f),
            spec=f.mapping("spec"),
            results=f.strings("results"),
            package_sha256=f.optional("package_sha256", str),
            signature=f.mapping("signature") or None,
        )


@dataclass(frozen=True, kw_only=True)
class SiteProgress(_ReplyView):
    """Where one site of a running job is (``show_stats``)."""

    state: str
    """What it does now: ``task offered``, ``result received``, ``gone: ...``."""
    round: int | None = None
    """The round of its last task or result."""
    metrics: Mapping[str, Any] = field(default_factory=dict)
    """The metrics of its last result (e.g. ``{"loss": 0.19}``)."""
    _reply: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def _decode(cls, f: _Fields) -> SiteProgress:
        return cls(
            state=f.required("state", str),
            round=f.optional("round", int),
            metrics=f.mapping("metrics"),
            _reply=f.data,
        )


@dataclass(frozen=True, kw_only=True)
class CrossSiteEval(_ReplyView):
    """A job's cross-site evaluation (``show_stats``): each model evaluated at
    each site, as the job stores it in ``run/cross_site_eval.json``."""

    models: tuple[str, ...]
    """Rows: ``"global"`` (the server's model), then each site whose model arrived."""
    sites: tuple[str, ...]
    """Columns: the sites that evaluated the models."""
    global_model: str | None = None
    """Where the global model came from: ``initial``, ``final`` or ``app/<file>``."""
    results: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Model -> site -> ``{"num_examples": n, "metrics": {...}}``."""
    missing: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Model -> site -> why that cell is empty."""
    not_submitted: Mapping[str, str] = field(default_factory=dict)
    """Site -> why its model has no row."""
    _reply: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def _decode(cls, f: _Fields) -> CrossSiteEval:
        return cls(
            models=f.strings("models"),
            sites=f.strings("sites"),
            global_model=f.optional("global_model", str),
            results=f.mapping("results"),
            missing=f.mapping("missing"),
            not_submitted=f.mapping("not_submitted"),
            _reply=f.data,
        )

    def metrics(self, model: str, site: str) -> Mapping[str, float] | None:
        """The metrics ``site`` reported for ``model``'s model; None if none."""
        cell = self.results.get(model, {}).get(site)
        return cell.get("metrics") if isinstance(cell, Mapping) else None

    def metric_names(self) -> list[str]:
        """Every metric some cell holds, in order of first appearance."""
        names: dict[str, None] = {}
        for row in self.results.values():
            for cell in row.values():
                if isinstance(cell, Mapping) and isinstance(cell.get("metrics"), Mapping):
                    names.update(dict.fromkeys(cell["metrics"]))
        return list(names)


@dataclass(frozen=True, kw_only=True)
class JobStats(_ReplyView):
    """``show_stats``: a job's progress and its metrics per round."""

    job_id: str
    """The job's full id."""
    status: str
    """The job's status (as :attr:`JobSummary.status`)."""
    current_round: int | None = None
    """The round the workflow is in (or last reached)."""
    num_rounds: int | None = None
    """How many rounds it runs, when it says."""
    sites: Mapping[str, SiteProgress] = field(default_factory=dict)
    """Each site's state while the job runs; empty when it does not."""
    progress: Mapping[str, Any] = field(default_factory=dict)
    """The workflow's last progress message (``round`` and what it adds)."""
    metrics: tuple[Mapping[str, Any], ...] = ()
    """One row per finished round, as in the run's ``metrics.jsonl``."""
    cross_site_eval: CrossSiteEval | None = None
    """The cross-site evaluation matrix, once the job has one."""
    _reply: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: object) -> JobStats:
        f = _Fields(data, "show_stats")
        sites = f.mapping("sites")
        rows = f.objects("metrics")
        matrix = f.data.get("cross_site_eval")
        return cls(
            cross_site_eval=(
                None
                if matrix is None
                else CrossSiteEval._decode(f.nested("cross_site_eval", matrix))
            ),
            job_id=f.required("job_id", str),
            status=f.required("status", str),
            current_round=f.optional("current_round", int),
            num_rounds=f.optional("num_rounds", int),
            sites={
                name: SiteProgress._decode(f.nested(f"sites.{name}", s))
                for name, s in sites.items()
            },
            progress=f.mapping("progress"),
            metrics=tuple(row.data for row in rows),
            _reply=f.data,
        )


@dataclass(frozen=True, kw_only=True)
class JobErrors(_ReplyView):
    """``show_errors``: error lines per source, only the sources that reported any."""

    by_target: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """``job`` (why the job failed), ``server`` and each site name -> their error lines."""
    _reply: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: object) -> JobErrors:
        f = _Fields(data, "show_errors")
        return cls(by_target={target: f.strings(target) for target in f.data}, _reply=f.data)

    def to_dict(self) -> dict[str, Any]:
        if self._reply is not None:
            return super().to_dict()
        return {target: list(lines) for target, lines in self.by_target.items()}


@dataclass(frozen=True, kw_only=True)
class SysInfo(_ReplyView):
    """``sys_info``: the platform of the server or of a connected site."""

    target: str
    """``server`` or the site's name."""
    platform: str | None = None
    """The operating system, as :func:`platform.platform` names it."""
    python: str | None = None
    """The Python version."""
    shoal: str | None = None
    """The shoal version."""
    cpus: int | None = None
    """Logical CPUs."""
    pid: int | None = None
    """The daemon's process id."""
    memory_gb: float | None = None
    """Physical memory in GiB, where the platform tells."""
    resources: Mapping[str, Any] = field(default_factory=dict)
    """A site's own ``local/resources.json`` (GPUs, ...); empty for the server."""
    _reply: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: object) -> SysInfo:
        f = _Fields(data, "sys_info")
        return cls(
            target=f.required("target", str),
            platform=f.optional("platform", str),
            python=f.optional("python", str),
            shoal=f.optional("shoal", str),
            cpus=f.optional("cpus", int),
            pid=f.optional("pid", int),
            memory_gb=f.optional("memory_gb", float),
            resources=f.mapping("resources"),
            _reply=f.data,
        )


@dataclass(frozen=True, kw_only=True)
class AuditEvents:
    """``audit``: events of the server's audit trail (project admins only)."""

    path: str
    """The trail's file on the server."""
    head: str
    """The trail's last line as ``SEQ:SHA256``: note it down elsewhere, and
    ``shoal audit verify --head`` proves later that no line up to it changed."""
    events: tuple[Mapping[str, Any], ...] = ()
    """The events, oldest first, each as it stands in the trail."""
    verify: Mapping[str, Any] | None = None
    """With ``verify``: ``ok``, ``lines`` and the first ``problem``."""

    @classmethod
    def from_json(cls, data: object) -> AuditEvents:
        f = _Fields(data, "audit")
        return cls(
            path=f.required("path", str),
            head=f.required("head", str),
            events=tuple(row.data for row in f.objects("events")),
            verify=f.mapping("verify") or None,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "head": self.head,
            "events": [dict(e) for e in self.events],
        }
        if self.verify is not None:
            out["verify"] = dict(self.verify)
        return out
