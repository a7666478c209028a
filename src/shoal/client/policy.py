"""A site's policy: which jobs it runs, and within what (``local/policy.yml``).

The site's operator writes it (``shoal provision`` leaves a commented
default in every site kit; ``local/`` is not signed). Absent, or empty, it
allows what shoal always allowed: any submitter, any code, any workflow, no
caps. Its sections::

    submitters: {orgs: [hospital-a], roles: [lead], admins: [alice@a.org]}
    code: {allow: sha256, sha256: ["3f1c..."]}   # any | none | sha256 | signed
    workflows: [fedavg, fedprox]
    filters: {result_out: [clip]}                # must be on the chain, else refused
    resources: {memory_mb: 4096, cpu_seconds: 3600, wall_time_s: 7200,
                processes: 256, concurrent_jobs: 2, gpus: ["0"]}
    metrics_may_leave: true

    policy = load_policy(kit.local / POLICY_FILE)
    reason = policy.refusal(JobFacts(submitter=..., code_sha256=..., workflow="fedavg"))

A site checks each job against it before any of the job's code is unpacked
(``SiteDaemon._prepare``); the server checks the summary each site
publishes (:meth:`SitePolicy.summary`) at submit, so that a job no site
would take is refused there. A fact the checker does not know (``None``:
the server knows no signer, nor the site's own filters) is not held
against the job: the site decides it.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shoal._yaml import AliasRefusedError, NoAliasLoader
from shoal.errors import ConfigError, ShoalError

__all__ = [
    "CODE_RULES",
    "POLICY_FILE",
    "Caps",
    "JobFacts",
    "PolicyCache",
    "PolicyRefusedError",
    "Principal",
    "SitePolicy",
    "load_policy",
    "parse_policy",
]

#: The site kit's local file holding the policy (``kit.local / POLICY_FILE``).
POLICY_FILE = "policy.yml"
#: Largest policy file read.
MAX_POLICY_BYTES = 256 * 1024
#: ``code.allow``: any code; none at all (the site takes no jobs); only
#: archives whose SHA-256 is listed; only archives signed by a listed signer.
CODE_RULES = ("any", "none", "sha256", "signed")
_SITE_POINTS = ("task_in", "result_out")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TOP = ("submitters", "code", "workflows", "filters", "resources", "metrics_may_leave")
_SUBMITTERS = ("orgs", "roles", "admins")
_CODE = ("allow", "sha256", "signers")
_RESOURCES = (
    "memory_mb",
    "cpu_seconds",
    "wall_time_s",
    "processes",
    "concurrent_jobs",
    "gpus",
)


class PolicyRefusedError(ShoalError):
    """A job the site's policy refuses; the message is the reason."""


@dataclass(frozen=True)
class Principal:
    """Who submitted (or signed) a job, as the server's certificate check saw them."""

    name: str = ""
    org: str = ""
    #: The admin role (``project_admin``, ``org_admin``, ``lead``, ``member``); "" unknown.
    role: str = ""

    @classmethod
    def of(cls, value: Any) -> Principal:
        """From what a job's header or verdict carries: a mapping with
        ``name``/``org``/``role``, a bare name, or nothing (unsigned)."""
        if isinstance(value, Principal):
            return value
        if isinstance(value, Mapping):
            return cls(
                name=str(value.get("name") or ""),
                org=str(value.get("org") or ""),
                role=str(value.get("role") or ""),
            )
        return cls(name=str(value or ""))

    def __bool__(self) -> bool:
        return bool(self.name)


@dataclass(frozen=True)
class Caps:
    """Resource caps on each job's worker; ``None``: no cap."""

    #: Address space of the job's processes, MiB (RLIMIT_AS, each process).
    memory_mb: int | None = None
    #: CPU time of each job process, seconds (RLIMIT_CPU: SIGXCPU, then SIGKILL).
    cpu_seconds: int | None = None
    #: The worker's wall-clock time, seconds: the daemon stops it after that.
    wall_time_s: float | None = None
    #: Processes (and threads) the job's user may have (RLIMIT_NPROC; per job
    #: when jobs run as a uid of their own, else counts the daemon user's).
    processes: int | None = None
    #: Jobs running at once on this site; one more is refused.
    concurrent_jobs: int | None = None
    #: CUDA devices a job may see (``CUDA_VISIBLE_DEVICES``); ``()``: none.
    gpus: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: getattr(self, k) for k in _RESOURCES if getattr(self, k) is not None
        }
        if self.gpus is not None:
            out["gpus"] = list(self.gpus)
        return out


@dataclass(frozen=True)
class JobFacts:
    """What a policy judges a job by; ``None``: not known to the checker."""

    submitter: Principal
    code_sha256: str
    workflow: str
    #: The verified signer; empty when the job is unsigned.
    signer: Principal | None = None
    #: Filter names on each site point's chain (site's and job's together).
    filters: Mapping[str, Sequence[str]] | None = None
    #: Jobs this site runs now.
    running_jobs: int | None = None


def _fmt(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "none"


@dataclass(frozen=True)
class SitePolicy:
    """A parsed ``local/policy.yml``; the defaults allow everything."""

    #: Organisations whose admins may run jobs here; None: any.
    orgs: tuple[str, ...] | None = None
    #: Admin roles that may run jobs here; None: any.
    roles: tuple[str, ...] | None = None
    #: Admins (certificate names) who may run jobs here whatever their org
    #: and role; None: no one by name.
    admins: tuple[str, ...] | None = None
    #: One of :data:`CODE_RULES`.
    code: str = "any"
    #: Archive SHA-256s allowed with ``code: sha256``.
    code_sha256: tuple[str, ...] = ()
    #: Signer names allowed with ``code: signed``.
    code_signers: tuple[str, ...] = ()
    #: Workflows that may run here; None: any.
    workflows: tuple[str, ...] | None = None
    #: Filters that must be on the chain of each site point; a job whose
    #: chain (the site's ``local/filters.yml`` and the job's own) lacks one
    #: is refused.
    filters: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    caps: Caps = field(default_factory=Caps)
    #: Whether this site's metrics may go to an experiment tracker.
    metrics_may_leave: bool = True
    #: The file's SHA-256 ("" when there is none).
    sha256: str = field(default="", compare=False)

    def refusal(self, job: JobFacts) -> str | None:
        """Why this site refuses ``job``, or None when it accepts it."""
        for check in (self._submitter, self._code, self._workflow, self._filters, self._busy):
            reason = check(job)
            if reason:
                return reason
        return None

    def _submitter(self, job: JobFacts) -> str | None:
        if self.orgs is None and self.roles is None and self.admins is None:
            return None
        who = job.submitter
        if self.admins is not None and who.name in self.admins:
            return None
        if self.orgs is None and self.roles is None:
            return f"submitter {who.name or '(unknown)'} is not among the admins allowed here"
        if self.orgs is not None and who.org not in self.orgs:
            return (
                f"submitter {who.name or '(unknown)'}'s org {who.org or '(unknown)'} "
                f"may not run jobs here (allowed: {_fmt(self.orgs)})"
            )
        if self.roles is not None and who.role not in self.roles:
            return (
                f"submitter {who.name or '(unknown)'}'s role {who.role or '(unknown)'} "
                f"may not run jobs here (allowed: {_fmt(self.roles)})"
            )
        return None

    def _code(self, job: JobFacts) -> str | None:
        if self.code == "any":
            return None
        if self.code == "none":
            return "this site runs no job code"
        if self.code == "sha256":
            if job.code_sha256 in self.code_sha256:
                return None
            return f"code {job.code_sha256[:12]}... is not on the site's allow-list"
        if job.signer is None:  # signed: a checker that cannot see the signer lets the site decide
            return None
        if not job.signer:
            return "the job is unsigned; this site runs only signed code"
        if job.signer.name not in self.code_signers:
            return (
                f"signer {job.signer.name} is not allowed here (allowed: {_fmt(self.code_signers)})"
            )
        return None

    def _workflow(self, job: JobFacts) -> str | None:
        if self.workflows is None or job.workflow in self.workflows:
            return None
        return f"workflow {job.workflow} may not run here (allowed: {_fmt(self.workflows)})"

    def _filters(self, job: JobFacts) -> str | None:
        if job.filters is None:
            return None
        for point, required in self.filters.items():
            present = set(job.filters.get(point, ()))
            missing = [name for name in required if name not in present]
            if missing:
                return (
                    f"filter {missing[0]} must run at {point} and is neither in the "
                    "site's local/filters.yml nor in the job's filters"
                )
        return None

    def _busy(self, job: JobFacts) -> str | None:
        cap = self.caps.concurrent_jobs
        if cap is None or job.running_jobs is None or job.running_jobs < cap:
            return None
        return f"{job.running_jobs} job(s) already running, the site's cap is {cap}"

    def summary(self) -> dict[str, Any]:
        """What the site tells the server (JSON-able): enough to refuse at
        submit a job this site would refuse; :meth:`from_summary` reads it."""
        out: dict[str, Any] = {"code": self.code, "sha256": self.sha256}
        for key in ("orgs", "roles", "admins", "workflows"):
            value = getattr(self, key)
            if value is not None:
                out[key] = list(value)
        if self.code == "sha256":
            out["code_sha256"] = list(self.code_sha256)
        if self.code == "signed":
            out["code_signers"] = list(self.code_signers)
        if self.filters:
            out["filters"] = {p: list(names) for p, names in self.filters.items()}
        out["caps"] = self.caps.to_dict()
        out["metrics_may_leave"] = self.metrics_may_leave
        return out

    @classmethod
    def from_summary(cls, data: Mapping[str, Any]) -> SitePolicy:
        """A policy from a site's :meth:`summary` (a server reads it from the
        site's Hello); ConfigError when it is malformed."""
        doc: dict[str, Any] = {
            "code": {
                "allow": data.get("code", "any"),
                "sha256": data.get("code_sha256", []),
                "signers": data.get("code_signers", []),
            },
            "submitters": {k: data[k] for k in _SUBMITTERS if k in data},
            "resources": data.get("caps") or {},
            "metrics_may_leave": data.get("metrics_may_leave", True),
        }
        if "workflows" in data:
            doc["workflows"] = data["workflows"]
        if data.get("filters"):
            doc["filters"] = data["filters"]
        policy = parse_policy(doc, where="site policy summary")
        return _with_sha(policy, str(data.get("sha256") or ""))


def _with_sha(policy: SitePolicy, sha256: str) -> SitePolicy:
    from dataclasses import replace

    return replace(policy, sha256=sha256)


# -- parsing --------------------------------------------------------------------


def _keys(section: Mapping[str, Any], where: str, known: Sequence[str]) -> None:
    for key in section:
        if key not in known:
            raise ConfigError(f"{where}: {key}: unknown key (known: {', '.join(known)})")


def _section(doc: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = doc.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{where}: {key}: must be a mapping, got {value!r}")
    return value


def _names(value: Any, where: str, key: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: {key}: must be a list of names, got {value!r}")
    return tuple(value)


def _count(value: Any, where: str, key: str, *, number: bool = False) -> Any:
    if value is None:
        return None
    ok = isinstance(value, int) or (number and isinstance(value, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value) or value <= 0:
        kind = "a number" if number else "a whole number"
        raise ConfigError(f"{where}: {key}: must be {kind} > 0, got {value!r}")
    return float(value) if number else int(value)


def parse_policy(doc: Any, *, where: str = POLICY_FILE) -> SitePolicy:
    """Validate a loaded policy document; ConfigError naming the bad key."""
    if doc is None:
        return SitePolicy()
    if not isinstance(doc, Mapping) or not all(isinstance(k, str) for k in doc):
        raise ConfigError(f"{where}: must be a mapping of settings")
    _keys(doc, where, _TOP)
    subs = _section(doc, "submitters", where)
    _keys(subs, f"{where}: submitters", _SUBMITTERS)
    code = _section(doc, "code", where)
    _keys(code, f"{where}: code", _CODE)
    allow = code.get("allow", "any")
    if allow not in CODE_RULES:
        raise ConfigError(
            f"{where}: code.allow: must be one of {', '.join(CODE_RULES)}, got {allow!r}"
        )
    raw_hashes = code.get("sha256")
    if isinstance(raw_hashes, list) and any(isinstance(h, int) for h in raw_hashes):
        # A hash of digits only reads as a number: quote them all.
        raise ConfigError(f"{where}: code.sha256: write each hash in quotes, got {raw_hashes!r}")
    hashes = _names(raw_hashes, where, "code.sha256") or ()
    for h in hashes:
        if not _SHA256.fullmatch(h):
            raise ConfigError(f"{where}: code.sha256: {h!r} is not a lowercase hex SHA-256")
    signers = _names(code.get("signers"), where, "code.signers") or ()
    if allow == "sha256" and not hashes:
        raise ConfigError(f"{where}: code.sha256: code.allow is sha256 but no hash is listed")
    if allow == "signed" and not signers:
        raise ConfigError(f"{where}: code.signers: code.allow is signed but no signer is listed")
    filters_doc = _section(doc, "filters", where)
    _keys(filters_doc, f"{where}: filters", _SITE_POINTS)
    filters = {}
    for point, names in filters_doc.items():
        parsed = _names(names, where, f"filters.{point}")
        if parsed:
            filters[point] = parsed
    res = _section(doc, "resources", where)
    _keys(res, f"{where}: resources", _RESOURCES)
    gpus_raw = res.get("gpus")
    if gpus_raw is not None and (
        not isinstance(gpus_raw, list)
        or not all(isinstance(g, (str, int)) and not isinstance(g, bool) for g in gpus_raw)
    ):
        raise ConfigError(
            f"{where}: resources.gpus: must be a list of CUDA device indexes or UUIDs, "
            f"got {gpus_raw!r}"
        )
    gpus = None if gpus_raw is None else tuple(str(g) for g in gpus_raw)
    if gpus and any("," in g for g in gpus):
        raise ConfigError(f"{where}: resources.gpus: one device per entry, got {gpus_raw!r}")
    caps = Caps(
        memory_mb=_count(res.get("memory_mb"), where, "resources.memory_mb"),
        cpu_seconds=_count(res.get("cpu_seconds"), where, "resources.cpu_seconds"),
        wall_time_s=_count(res.get("wall_time_s"), where, "resources.wall_time_s", number=True),
        processes=_count(res.get("processes"), where, "resources.processes"),
        concurrent_jobs=_count(res.get("concurrent_jobs"), where, "resources.concurrent_jobs"),
        gpus=gpus,
    )
    may_leave = doc.get("metrics_may_leave", True)
    if not isinstance(may_leave, bool):
        raise ConfigError(f"{where}: metrics_may_leave: must be true or false, got {may_leave!r}")
    return SitePolicy(
        orgs=_names(subs.get("orgs"), where, "submitters.orgs"),
        roles=_names(subs.get("roles"), where, "submitters.roles"),
        admins=_names(subs.get("admins"), where, "submitters.admins"),
        code=str(allow),
        code_sha256=hashes,
        code_signers=signers,
        workflows=_names(doc.get("workflows"), where, "workflows"),
        filters=filters,
        caps=caps,
        metrics_may_leave=may_leave,
    )


def load_policy(path: Path) -> SitePolicy:
    """The policy in ``path``; the defaults when there is no such file.

    A file that cannot be read or parsed is a ConfigError: a typo must not
    read as "allow everything".
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return SitePolicy()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from exc
    if len(raw) > MAX_POLICY_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_POLICY_BYTES} bytes")
    try:
        doc = yaml.load(raw.decode("utf-8"), Loader=NoAliasLoader)  # noqa: S506
    except AliasRefusedError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else "?"
        raise ConfigError(f"{path}: line {line}: {exc.problem}") from None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return _with_sha(parse_policy(doc, where=str(path)), hashlib.sha256(raw).hexdigest())


class PolicyCache:
    """``load_policy`` once per change of the file (size, mtime, inode).

    A job start costs a ``stat``; an edit is picked up by the next job.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._policy: SitePolicy | None = None

    def get(self) -> SitePolicy:
        """The policy now; ConfigError when the file is bad (each call, until fixed)."""
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (st.st_size, st.st_mtime_ns, st.st_ino)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if self._policy is not None and stamp == self._stamp:
                return self._policy
            policy = load_policy(self.path)
            self._stamp, self._policy = stamp, policy
            return policy
