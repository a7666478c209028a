"""How long a site keeps its job folders, and the sweep that removes them.

A site keeps one folder per job under ``<workspace>/jobs/<job_id>/`` (the
package, the unpacked job, ``log.txt``, ``worker.json`` and whatever the job
wrote: code, data, models). Without a rule they stay forever, even after the
job is deleted on the server. The rule lives in the site kit's
``local/retention.json`` (absent: the defaults)::

    {"format": 1, "keep_finished_days": 7, "keep_deleted": false, "sweep_interval_s": 3600}

    policy = load_policy(kit.local / RETENTION_FILE)
    removed = sweep(jobs_dir, running={"..."}, deleted={"..."}, policy=policy, now=time.time())

The sweep never removes a running job's folder, never follows a symbolic link
(job code can leave links to anywhere in its folder: the link goes, its target
stays) and never touches a name that is not a job id.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import shutil
import stat
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.errors import ConfigError

__all__ = [
    "RETENTION_FILE",
    "RetentionPolicy",
    "detach_stale",
    "is_job_id",
    "last_modified",
    "load_policy",
    "remove_detached",
    "sweep",
]

log = logging.getLogger(__name__)

#: The site kit's local file holding the policy (``kit.local / RETENTION_FILE``).
RETENTION_FILE = "retention.json"

#: Job ids are the server's ``str(uuid.uuid4())``; nothing else in ``jobs/`` is ours to remove.
_JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: A folder being removed is renamed to this prefix first: a half-removed
#: folder never looks like a job, and a sweep after a crash finishes it.
_DETACHED = ".removing-"
_DAY_S = 86400.0
#: rename(2) errors that mean "this file system does not rename folders"
#: (Cloud Storage FUSE: EMFILE past its rename-dir-limit, default 0).
_NO_FOLDER_RENAME = frozenset(
    {errno.EMFILE, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV}
)


@dataclass(frozen=True)
class RetentionPolicy:
    """What a site keeps of its jobs' folders."""

    #: Days a finished job's folder is kept after its last change; None keeps it forever.
    keep_finished_days: float | None = 7.0
    #: Keep the folder of a job deleted on the server (until the age rule takes it).
    keep_deleted: bool = False
    #: Seconds between two sweeps of a running site daemon.
    sweep_interval_s: float = 3600.0

    def __post_init__(self) -> None:
        days = self.keep_finished_days
        if days is not None and not (_is_number(days) and math.isfinite(days) and days >= 0):
            raise ConfigError(
                f"keep_finished_days must be a number >= 0 or null (never), not {days!r}"
            )
        if not isinstance(self.keep_deleted, bool):
            raise ConfigError(f"keep_deleted must be true or false, not {self.keep_deleted!r}")
        interval = self.sweep_interval_s
        if not (_is_number(interval) and math.isfinite(interval) and interval > 0):
            raise ConfigError(f"sweep_interval_s must be a number > 0, not {interval!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "format": 1,
            "keep_finished_days": self.keep_finished_days,
            "keep_deleted": self.keep_deleted,
            "sweep_interval_s": self.sweep_interval_s,
        }


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def load_policy(path: Path) -> RetentionPolicy:
    """The policy in ``path``; the defaults when it does not exist.

    A file that exists but is wrong raises ConfigError naming the file and the
    field: a typo must not silently change what a site deletes.
    """
    if not path.is_file():
        return RetentionPolicy()
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable JSON document: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: must be a JSON object, not {type(doc).__name__}")
    if doc.get("format", 1) != 1:
        raise ConfigError(f"{path}: format must be 1, not {doc.get('format')!r}")
    fields = ("keep_finished_days", "keep_deleted", "sweep_interval_s")
    unknown = sorted(set(doc) - {"format", "comment", *fields})
    if unknown:
        raise ConfigError(
            f"{path}: unknown field(s) {', '.join(unknown)} (known: {', '.join(fields)})"
        )
    try:
        return RetentionPolicy(**{k: doc[k] for k in fields if k in doc})
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def is_job_id(name: str) -> bool:
    """True for a canonical job id (a lower-case UUID), the only names a sweep removes."""
    if not _JOB_ID.fullmatch(name):
        return False
    try:
        return str(uuid.UUID(name)) == name
    except ValueError:
        return False


def last_modified(folder: Path) -> float:
    """Newest mtime of ``folder`` and its direct entries, links not followed.

    The worker appends to ``log.txt`` until it exits, so this is about when
    the job ended; a deep walk would cost a site with big datasets far more.
    """
    newest = folder.lstat().st_mtime
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
                except OSError:
                    continue
    except OSError:
        pass
    return newest


def detach_stale(
    jobs_dir: Path,
    *,
    running: Collection[str],
    deleted: Collection[str],
    policy: RetentionPolicy,
    now: float,
) -> list[tuple[str, Path]]:
    """Rename the folders due for removal out of the job-id namespace.

    Returns ``(job_id, detached path)`` pairs for :func:`remove_detached`.
    Cheap (no file data is touched), so a caller can hold the lock that
    guards starting jobs while this decides, and remove outside it. On a file
    system that does not rename folders (a Cloud Storage FUSE bucket) the
    folder is removed here instead, and its pair names the original path.
    """
    out: list[tuple[str, Path]] = []
    try:
        names = sorted(os.listdir(jobs_dir))
    except FileNotFoundError:
        return out
    cutoff = None if policy.keep_finished_days is None else now - policy.keep_finished_days * _DAY_S
    for name in names:
        if name.startswith(_DETACHED):
            out.append((name[len(_DETACHED) :].split(".", 1)[0], jobs_dir / name))
            continue
        if not is_job_id(name) or name in running:
            continue
        path = jobs_dir / name
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            # A link named like a job is no folder of ours: drop the link, never its target.
            if name in deleted and not policy.keep_deleted:
                path.unlink(missing_ok=True)
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        if name in deleted and not policy.keep_deleted:
            why = "deleted on the server"
        elif cutoff is not None and last_modified(path) < cutoff:
            why = f"finished more than {policy.keep_finished_days:g} days ago"
        else:
            continue
        target = jobs_dir / f"{_DETACHED}{name}.{uuid.uuid4().hex[:8]}"
        try:
            os.rename(path, target)
        except OSError as exc:
            if exc.errno not in _NO_FOLDER_RENAME:
                log.warning("job %s: could not remove its folder %s: %s", name, path, exc)
                continue
            # A bucket mounted with Cloud Storage FUSE refuses to rename a
            # non-empty folder (EMFILE). Remove it where it is, still under
            # the caller's lock, so no job starts in it meanwhile: slower,
            # but only on such a mount. What cannot be removed is retried
            # by the next sweep, the folder still under its job's name.
            log.info("job %s: removing its folder in place (%s)", name, why)
            remove_detached(path)
            out.append((name, path))
            continue
        log.info("job %s: removing its folder (%s)", name, why)
        out.append((name, target))
    return out


def remove_detached(path: Path) -> bool:
    """Remove a folder :func:`detach_stale` renamed; True when it is gone.

    ``shutil.rmtree`` on Linux works on file descriptors opened without
    following links: a link inside is removed, its target is not touched.
    """
    try:
        if stat.S_ISLNK(path.lstat().st_mode):
            path.unlink()
            return True
    except FileNotFoundError:
        return True
    failures: list[str] = []

    def failed(func: Any, p: str, exc_info: Any) -> None:
        failures.append(f"{p}: {exc_info[1]}")

    shutil.rmtree(path, onerror=failed)
    if failures:
        # Left detached: the next sweep tries again.
        log.warning("could not remove all of %s (%s)", path, "; ".join(failures[:3]))
    return not path.exists()


def sweep(
    jobs_dir: Path,
    *,
    running: Collection[str],
    deleted: Collection[str],
    policy: RetentionPolicy,
    now: float,
) -> list[str]:
    """Remove the job folders ``policy`` no longer keeps; returns their job ids.

    ``running``: jobs whose folders are in use (never removed). ``deleted``:
    jobs deleted on the server (removed at once unless ``keep_deleted``).
    Other job folders go once unchanged for ``keep_finished_days``.
    """
    removed: list[str] = []
    for job_id, path in detach_stale(
        jobs_dir, running=running, deleted=deleted, policy=policy, now=now
    ):
        if remove_detached(path) and job_id not in removed:
            removed.append(job_id)
    return removed
