"""Confinement of job code: what a job's processes may read, write and see.

Job code — a site's training script, the server-side hooks of a workflow —
is code written by whoever submitted the job. It runs beside the daemon's
private key, the startup kit and other jobs' folders, and must reach none
of them. Each job process is started through :mod:`shoal.sandbox.__main__`,
which applies a :class:`Confinement` to itself and then execs the job:

- **Landlock** (Linux 5.13+, no privilege needed): file access is limited
  to the system's and Python's folders (read), the data folders the
  operator declared (read), and the job's own folder (read and write).
  The kit, the workspace and every other job's folder are out of reach
  even when they lie beneath an allowed folder.
- **Another user**, when the daemon runs as root and the interpreter is
  reachable by other users: each job gets a uid of its own, so file
  permissions protect the kit (keys are 0600) and other jobs as well.
- **A scrubbed environment**: only a documented set of variables reaches
  job code (:func:`job_env`); the daemon's own secrets stay with it.
- **Resource caps** from the site's policy (``shoal.client.policy.Caps``),
  as rlimits every process of the job inherits: memory (``RLIMIT_DATA``:
  heap and anonymous mappings, what a job allocates, not the address space
  CUDA or malloc arenas reserve), CPU seconds (``RLIMIT_CPU``) and
  processes (``RLIMIT_NPROC``). They hold even with confinement off.

``SHOAL_CONFINEMENT=off`` turns confinement off (a warning in every job's
log); otherwise a job whose code cannot be confined is refused.

    plan = Confinement.for_job([job_dir / "job"], deny=[kit.root, workspace])
    argv = plan.command([python, "train.py"])   # exec'd after confining itself
"""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shoal.errors import ConfigError

__all__ = [
    "CONFINEMENT_ENV",
    "DATA_PATHS_ENV",
    "DENY_PATHS_ENV",
    "JOB_ENV_ENV",
    "WRITE_PATHS_ENV",
    "Confinement",
    "JobUser",
    "confinement_mode",
    "describe",
    "job_env",
    "job_user",
    "secret_paths",
]

log = logging.getLogger(__name__)

#: ``off`` runs job code unconfined (not recommended); anything else requires it.
CONFINEMENT_ENV = "SHOAL_CONFINEMENT"
#: Folders (``os.pathsep``-separated) that job code may read: the site's data.
DATA_PATHS_ENV = "SHOAL_DATA_PATHS"
#: Folders (``os.pathsep``-separated) that job code may also write: a scratch
#: or output volume the operator shares with jobs.
WRITE_PATHS_ENV = "SHOAL_WRITE_PATHS"
#: Folders (``os.pathsep``-separated) job code must never reach, beyond the
#: kit and the workspace the daemon knows of.
DENY_PATHS_ENV = "SHOAL_DENY_PATHS"
#: Names (comma-separated) of further daemon variables to hand to job code.
JOB_ENV_ENV = "SHOAL_JOB_ENV"

#: The system's folders: programs, libraries, certificates, time zones.
SYSTEM_READ = ("/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/etc", "/opt", "/sys", "/proc")
#: Read and device ioctls (GPUs are driven through ioctls on /dev/nvidia*).
DEVICES = ("/dev",)
#: Written by ordinary libraries whatever TMPDIR says.
SYSTEM_WRITE = ("/dev/null", "/dev/shm")

# Variables that reach job code from the daemon's environment. Anything else
# (cloud credentials, tokens, the daemon's own settings) stays behind.
_ENV_NAMES = frozenset(
    {
        "PATH",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TERM",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "PYTHONPATH",
        "SHOAL_MNIST_PATH",
        DATA_PATHS_ENV,
        WRITE_PATHS_ENV,
    }
)
_ENV_PREFIXES = (
    "LC_",
    "CUDA_",
    "NVIDIA_",
    "OMP_",
    "MKL_",
    "OPENBLAS_",
    "TF_",
    "XLA_",
    "NCCL_",
)
_UID_BASE = 0x30000
_UID_COUNT = 0x10000


def confinement_mode(environ: Mapping[str, str] | None = None) -> str:
    """``"off"`` when the operator turned confinement off, else ``"required"``."""
    value = (environ if environ is not None else os.environ).get(CONFINEMENT_ENV, "")
    value = value.strip().lower()
    if value in ("off", "0", "false", "no"):
        return "off"
    if value not in ("", "on", "1", "true", "yes", "required"):
        raise ConfigError(f"{CONFINEMENT_ENV}={value!r}: expected 'off' or 'required'")
    return "required"


def data_paths(
    environ: Mapping[str, str] | None = None, name: str = DATA_PATHS_ENV
) -> tuple[str, ...]:
    """The folders an operator declared readable (``SHOAL_DATA_PATHS``) or
    writable (``SHOAL_WRITE_PATHS``) by job code."""
    value = (environ if environ is not None else os.environ).get(name, "")
    return tuple(p for p in value.split(os.pathsep) if p.strip())


def _python_paths() -> list[str]:
    """Folders the interpreter and its packages live in (shoal's own included)."""
    import shoal

    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(shoal.__file__).parent)}
    paths.add(str(Path(sys.executable).resolve().parent.parent))
    paths.update(p for p in sys.path if p and os.path.isabs(p))
    return sorted(paths)


@dataclass(frozen=True)
class Confinement:
    """What a job process may touch; applied by ``python -m shoal.sandbox``."""

    #: Readable (and executable) beneath.
    read: tuple[str, ...]
    #: Readable and writable beneath: the job's own folder.
    write: tuple[str, ...]
    #: Never reachable, even beneath ``read``: kits, workspaces, other jobs.
    deny: tuple[str, ...]
    #: Readable, granted as they are: the job's own files (its credential).
    own: tuple[str, ...] = ()
    #: Readable, with device ioctls allowed.
    devices: tuple[str, ...] = DEVICES
    #: ``"required"``: refuse to run unconfined; ``"off"``: run as is.
    mode: str = "required"
    #: Switch to this uid/gid (no supplementary groups) once confined; root
    #: daemons only. Done here, in a fresh single-threaded process, not by
    #: the daemon's fork: gRPC's fork handlers crash a forked child.
    uid: int | None = None
    gid: int | None = None
    #: Set for the job's environment in the launcher's log line.
    label: str = field(default="job")
    #: Resource caps (None: none), each process of the job: private writable
    #: memory in MiB, CPU seconds, processes of the job's user.
    memory_mb: int | None = None
    cpu_seconds: int | None = None
    processes: int | None = None

    @classmethod
    def for_job(
        cls,
        write: Iterable[Path],
        *,
        deny: Iterable[Path],
        extra_read: Iterable[Path] = (),
        label: str = "job",
        environ: Mapping[str, str] | None = None,
    ) -> Confinement:
        """The usual plan: system and Python folders and declared data (read),
        ``extra_read``, and the job's own folders ``write`` (read and write)."""
        return cls(
            read=(*SYSTEM_READ, *_python_paths(), *data_paths(environ)),
            write=(*map(str, write), *data_paths(environ, WRITE_PATHS_ENV), *SYSTEM_WRITE),
            deny=tuple(str(p) for p in deny),
            own=tuple(map(str, extra_read)),
            mode=confinement_mode(environ),
            label=label,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Confinement:
        data = json.loads(text)
        return cls(
            read=tuple(data["read"]),
            write=tuple(data["write"]),
            deny=tuple(data["deny"]),
            own=tuple(data["own"]),
            devices=tuple(data["devices"]),
            mode=str(data["mode"]),
            label=str(data["label"]),
            uid=None if data.get("uid") is None else int(data["uid"]),
            gid=None if data.get("gid") is None else int(data["gid"]),
            memory_mb=_opt_int(data.get("memory_mb")),
            cpu_seconds=_opt_int(data.get("cpu_seconds")),
            processes=_opt_int(data.get("processes")),
        )

    def command(self, argv: Sequence[str], *, python: str = sys.executable) -> list[str]:
        """``argv`` started through the launcher that confines it first."""
        return [python, "-m", "shoal.sandbox", self.to_json(), "--", *argv]


def _opt_int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def secret_paths(
    kit_root: Path, workspace: Path, *, environ: Mapping[str, str] | None = None
) -> list[Path]:
    """What job code must never reach: the daemon's kit, its workspace and, for
    a kit still in its provisioning folder (``prod_NN``), the project folder
    above it, which holds every kit and the root CA's key (``state/``); the
    kit a container staged ours from (``SHOAL_KIT_SOURCE``, under ``/etc`` in
    the Kubernetes manifests) and the operator's ``SHOAL_DENY_PATHS``."""
    env = environ if environ is not None else os.environ
    root = kit_root.resolve()
    paths = [root, workspace.resolve()]
    if root.parent.name.startswith("prod_") and (root.parent.parent / "state").is_dir():
        paths.append(root.parent.parent)
    if env.get("SHOAL_KIT_SOURCE"):
        paths.append(Path(env["SHOAL_KIT_SOURCE"]))
    paths += [Path(p) for p in data_paths(env, DENY_PATHS_ENV)]
    return paths


def _real(path: str) -> Path | None:
    try:
        return Path(os.path.realpath(path))
    except OSError:
        return None


def _within(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def expand(root: Path, deny: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """``root`` less every denied subtree, as (whole subtrees, listable folders).

    Landlock can only allow, so a denied folder beneath an allowed one is cut
    out by allowing each of its siblings instead, level by level; the
    folders on the way down may be listed but not read into.
    """
    inside = [d for d in deny if d == root or root in d.parents]
    if not inside:
        return [root], []
    if root in inside:
        return [], []
    whole: list[Path] = []
    listable = [root]
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return [], listable
    for entry in entries:
        path = Path(entry.path)
        real = _real(entry.path)
        if real is None:
            continue
        if entry.is_symlink() and (_within(real, inside) or any(real in d.parents for d in inside)):
            continue  # a link into (or above) a denied folder
        sub_whole, sub_list = expand(path, inside)
        whole += sub_whole
        listable += sub_list
    return whole, listable


def apply(plan: Confinement) -> str:
    """Confine this process (before exec); returns what was applied, for the log.

    Raises :class:`~shoal.sandbox.landlock.LandlockError` (an OSError) when
    the kernel cannot confine and the plan requires it.
    """
    limits = _limit(plan)
    if plan.mode == "off":
        return "unconfined (SHOAL_CONFINEMENT=off)" + limits + _switch_user(plan)
    return _landlock(plan) + limits + _switch_user(plan)


def _limit(plan: Confinement) -> str:
    """Set the plan's rlimits (soft and hard: job code cannot raise them)."""
    import resource

    caps = [
        ("memory", resource.RLIMIT_DATA, plan.memory_mb, 2**20, "MiB"),
        ("CPU", resource.RLIMIT_CPU, plan.cpu_seconds, 1, "s"),
        ("processes", resource.RLIMIT_NPROC, plan.processes, 1, ""),
    ]
    done = []
    for name, which, value, unit, suffix in caps:
        if value is None:
            continue
        soft = int(value) * unit
        # CPU: SIGXCPU at the soft limit (reported as the cap), SIGKILL a
        # little later for a job that catches it.
        hard = soft + 5 if which == resource.RLIMIT_CPU else soft
        _, current = resource.getrlimit(which)
        if current != resource.RLIM_INFINITY:
            soft, hard = min(soft, current), min(hard, current)
        resource.setrlimit(which, (soft, hard))
        done.append(f"{name} {value}{(' ' + suffix) if suffix else ''}")
    return f", caps: {', '.join(done)}" if done else ""


def _switch_user(plan: Confinement) -> str:
    if plan.uid is None:
        return ""
    gid = plan.gid if plan.gid is not None else plan.uid
    os.setgroups([])
    os.setgid(gid)
    os.setuid(plan.uid)
    return f", uid {plan.uid}"


def _landlock(plan: Confinement) -> str:
    from shoal.sandbox import landlock

    version = landlock.abi()
    ruleset = landlock.Ruleset(version)  # raises when Landlock is missing
    deny = [r for d in plan.deny if (r := _real(d)) is not None]
    rules = 0
    for group, access in ((plan.write, ruleset.read | ruleset.write), (plan.own, ruleset.read)):
        for path in group:
            real = _real(path)
            if real is not None and ruleset.allow(real, access):
                rules += 1
    for group, access in ((plan.read, ruleset.read), (plan.devices, ruleset.read | ruleset.device)):
        for path in group:
            real = _real(path)
            if real is None or _within(real, deny):
                continue
            whole, listable = expand(real, deny)
            for p in whole:
                rules += ruleset.allow(p, access)
            for p in listable:
                rules += ruleset.allow(p, landlock.READ_DIR)
    ruleset.restrict_self()
    return f"Landlock ABI {version}, {rules} rules"


@dataclass(frozen=True)
class JobUser:
    """The uid/gid a job's processes run as (root daemons only)."""

    uid: int
    gid: int


def _reachable_by_others(path: Path) -> bool:
    """Whether a user with no group in common could open ``path``."""
    try:
        path = path.resolve()
        for folder in [*reversed(path.parents), path]:
            mode = folder.stat().st_mode
            if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
                return False
        return bool(path.stat().st_mode & stat.S_IROTH)
    except OSError:
        return False


def _traversable_by_others(folder: Path) -> bool:
    """Whether a user with no rights can pass through ``folder`` and every
    folder above it (search permission: it need not list them)."""
    try:
        folder = folder.resolve()
        return all(p.stat().st_mode & stat.S_IXOTH for p in [*folder.parents, folder])
    except OSError:
        return False


def job_user(in_use: Iterable[int], *, workspace: Path | None = None) -> tuple[JobUser | None, str]:
    """A uid of its own for the next job, or None and why not.

    Only a root daemon can switch users, and only to some avail if the
    interpreter and shoal's package can be read by a user with no rights and
    the ``workspace`` (where job folders live) can be passed through by one:
    a kit in its provisioning folder (0700, beside the root CA's key) or a
    private parent leaves Landlock alone to confine job code.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None, "the daemon does not run as root"
    import shoal

    for needed in (Path(sys.executable), Path(shoal.__file__)):
        if not _reachable_by_others(needed):
            return None, f"{needed.resolve()} cannot be read by other users"
    if workspace is not None and not _traversable_by_others(workspace):
        return None, f"other users cannot pass through {workspace} (chmod o+x it to allow)"
    taken = set(in_use)
    for offset in range(_UID_COUNT):
        uid = _UID_BASE + offset
        if uid not in taken:
            return JobUser(uid=uid, gid=uid), f"uid {uid}"
    return None, "no free job uid"


def job_env(
    environ: Mapping[str, str], *, home: Path, tmp: Path, extra: Mapping[str, str] = {}
) -> dict[str, str]:
    """The environment job code gets: a documented few of the daemon's variables,
    ``HOME`` and ``TMPDIR`` inside the job's folder, then the job's own ``extra``."""
    chosen = {n.strip() for n in environ.get(JOB_ENV_ENV, "").split(",") if n.strip()}
    env = {
        k: v
        for k, v in environ.items()
        if k in _ENV_NAMES or k in chosen or k.startswith(_ENV_PREFIXES)
    }
    env.setdefault("PATH", os.defpath)
    env["HOME"] = str(home)
    env["TMPDIR"] = str(tmp)
    env.update(extra)
    return env


def describe(user: JobUser | None, why: str, mode: str) -> str:
    """One line for the daemon's log: how job code will be confined."""
    from shoal.sandbox import landlock

    if mode == "off":
        return "job code runs UNCONFINED (SHOAL_CONFINEMENT=off): it can read this daemon's keys"
    version = landlock.abi()
    parts = [f"Landlock ABI {version}" if version else "no Landlock in this kernel"]
    parts.append(f"a uid per job ({why})" if user else f"same user ({why})")
    verdict = "" if version else "; jobs will be refused (set SHOAL_CONFINEMENT=off to run them)"
    return "job code confined by " + ", ".join(parts) + verdict
