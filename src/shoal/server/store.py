"""The job store: SQLite for metadata, files in the workspace.

Each submitter has a quota of stored job bytes (:data:`DEFAULT_SUBMITTER_QUOTA_BYTES`):
the archive as received plus its unpacked copy, summed over that submitter's
jobs still in the store. :meth:`JobStore.create` checks it in the same
transaction that adds the row, so concurrent submits cannot both slip under.

Written so that a crash never leaves it corrupt: every metadata change is one
SQLite transaction (WAL, synchronous=FULL); a job's folder is created (under
its final name) before its row and removed after it, and start-up sweeps
folders that have no row (a crash between the two). The row is the commit
point: no folder is ever renamed, because a bucket mounted with Cloud Storage
FUSE refuses to rename a non-empty folder (see docs/deploy-kubernetes.md).

The database may live apart from the job folders (``state_dir``): SQLite
needs the POSIX locks and fsync of a local or block volume, while the job
folders may sit on a bucket.

    STATE_DIR/store.db                    (STATE_DIR is WORKSPACE unless given)
    WORKSPACE/jobs/<job_id>/job.zip       the package as submitted
    WORKSPACE/jobs/<job_id>/job/          unpacked: job.yml + app/ (the workflow process runs it)
    WORKSPACE/jobs/<job_id>/run/          models, metrics, checkpoints, results
    WORKSPACE/jobs/<job_id>/logs/         server.log and one log per site

Each row keeps the submitter's signature of job.zip (``signature_json``,
``shoal.jobs.signature``) as sent; a row from before signed jobs has none
(NULL), is listed as any other, and is refused by every site.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import stat
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from shoal import jobstatus
from shoal.audit import AuditSink
from shoal.errors import ConfigError, JobValidationError, NotFoundError

__all__ = [
    "DEFAULT_SUBMITTER_QUOTA_BYTES",
    "JobRecord",
    "JobStore",
    "folder_bytes",
    "quota_message",
    "utc_now",
]

log = logging.getLogger(__name__)

#: Stored job bytes (archives + unpacked copies) one submitter may hold by default.
DEFAULT_SUBMITTER_QUOTA_BYTES = 2 * 1024**3

# SQLite's INTEGER is a signed 64-bit value; Python's sqlite3 raises
# OverflowError past it.
_SQL_INT_MIN, _SQL_INT_MAX = -(2**63), 2**63 - 1
_INT_FIELDS = ("current_round", "num_rounds")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    submit_time TEXT NOT NULL,
    start_time TEXT,
    end_time TEXT,
    submitter TEXT NOT NULL,
    submitter_org TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    sites_json TEXT NOT NULL DEFAULT '[]',
    current_round INTEGER,
    num_rounds INTEGER,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    package_sha256 TEXT NOT NULL,
    package_size INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    stored_bytes INTEGER,
    submitter_role TEXT NOT NULL DEFAULT '',
    signature_json TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
"""


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files under ``folder`` (links not followed)."""
    total = 0
    for path in folder.rglob("*"):
        st = path.lstat()
        if stat.S_ISREG(st.st_mode):
            total += st.st_size
    return total


def _sql_int(value: Any, name: str) -> int | None:
    """``value`` as SQLite can hold it; ``ValueError`` naming ``name`` otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: must be an integer, got {type(value).__name__}")
    if not _SQL_INT_MIN <= value <= _SQL_INT_MAX:
        raise ValueError(f"{name}: {value} is out of the 64-bit integer range")
    return value


def _like_prefix(text: str) -> str:
    """A LIKE pattern matching values that start with ``text`` taken literally.

    ``%`` and ``_`` typed by a user are characters, not wildcards: ``find("_")``
    must not pick an arbitrary job.
    """
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def quota_message(submitter: str, quota_bytes: int, used: int, size: int) -> str:
    """The refusal of a job that would take ``submitter`` past its quota."""
    return (
        f"{submitter}: job of {size} bytes refused: stored jobs quota is {quota_bytes} bytes "
        f"({quota_bytes / 2**20:.1f} MiB) and {used} bytes are already used; delete "
        "finished jobs to free space"
    )


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat()


@dataclass(frozen=True)
class JobRecord:
    """One row of the job store."""

    job_id: str
    name: str
    status: str
    submit_time: str
    start_time: str | None
    end_time: str | None
    submitter: str
    submitter_org: str
    spec: Mapping[str, Any]
    sites: Sequence[str]
    current_round: int | None
    num_rounds: int | None
    error: str | None
    attempts: int
    package_sha256: str
    package_size: int
    #: The job's folder in the workspace.
    folder: Path = field(compare=False)
    #: Bytes counted against the submitter's quota: job.zip + the unpacked job/.
    stored_bytes: int = 0
    #: The submitter's admin role at submit ("" for jobs stored before roles were kept).
    submitter_role: str = ""
    #: The submitter's signature of job.zip (``JobSignature.to_json()`` form),
    #: passed to the sites as stored; None for a job from before signed jobs.
    signature: Mapping[str, Any] | None = field(default=None, compare=False)

    @property
    def package(self) -> Path:
        return self.folder / "job.zip"

    @property
    def job_dir(self) -> Path:
        """The unpacked job folder: job.yml and app/."""
        return self.folder / "job"

    @property
    def run_dir(self) -> Path:
        return self.folder / "run"

    @property
    def logs_dir(self) -> Path:
        return self.folder / "logs"

    def run_duration_s(self, now: datetime | None = None) -> float | None:
        if not self.start_time:
            return None
        start = datetime.fromisoformat(self.start_time)
        end = datetime.fromisoformat(self.end_time) if self.end_time else None
        return ((end or now or datetime.now(timezone.utc)) - start).total_seconds()

    def summary(self) -> dict[str, Any]:
        """The job as the admin API reports it (JSON-able)."""
        return {
            "job_id": self.job_id,
            "name": self.name,
            "status": self.status,
            "submit_time": self.submit_time,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "run_duration_s": self.run_duration_s(),
            "submitter": self.submitter,
            "submitter_org": self.submitter_org,
            "sites": list(self.sites),
            "current_round": self.current_round,
            "num_rounds": self.num_rounds,
            "error": self.error,
            "attempts": self.attempts,
        }


class JobStore:
    """Jobs' metadata and folders. Thread-safe; one instance per server."""

    def __init__(
        self, workspace: Path, *, state_dir: Path | None = None, audit: AuditSink | None = None
    ) -> None:
        self.root = workspace
        # Every status a job takes goes through create() and update() below:
        # the one place job state changes, so the one place they are audited.
        self._audit = audit
        self.state_dir = state_dir if state_dir is not None else workspace
        self.jobs_dir = workspace / "jobs"
        # Private whatever the process's umask (a library user's may be 022):
        # jobs hold user code, data and models. A job folder is made by
        # staging_folder(), 0700 too; SQLite gives store.db-wal and -shm the
        # mode of store.db.
        self.jobs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.jobs_dir.chmod(0o700)
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        db_path = self.state_dir / "store.db"
        if not db_path.exists():
            self._refuse_orphaned_jobs(db_path)
        os.close(os.open(db_path, os.O_RDWR | os.O_CREAT, 0o600))
        db_path.chmod(0o600)
        for leftover in ("store.db-wal", "store.db-shm"):  # from a run before this rule
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / leftover).chmod(0o600)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._migrate()
        self._sweep()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writes -------------------------------------------------------------

    def create(
        self,
        *,
        name: str,
        spec: Mapping[str, Any],
        staged_folder: Path,
        submitter: str,
        submitter_org: str,
        package_sha256: str,
        package_size: int,
        num_rounds: int | None,
        quota_bytes: int | None = None,
        submitter_role: str = "",
        signature: Mapping[str, Any] | None = None,
    ) -> JobRecord:
        """Adopt a staged job folder (job.zip + job/) under a new id.

        ``signature``: the submitter's signature of job.zip, stored as given
        (the admin service has checked it).

        With ``quota_bytes``, refuse (JobValidationError, the staged folder
        removed, nothing else touched) when the submitter's stored bytes plus
        this job's would pass it.
        """
        try:
            num_rounds = _sql_int(num_rounds, "num_rounds")
        except ValueError as exc:
            shutil.rmtree(staged_folder, ignore_errors=True)
            raise JobValidationError(f"job.yml: workflow.{exc}") from None
        size = folder_bytes(staged_folder)
        # The staging folder already has the job's final name: adopting it is
        # adding its row, no rename (see the module docstring).
        folder = staged_folder
        job_id = folder.name
        if folder.parent != self.jobs_dir or not _is_uuid(job_id):
            raise ValueError(f"{folder}: not a folder from staging_folder()")
        try:
            with self._tx() as db:
                if quota_bytes is not None:
                    used = self._used_bytes(db, submitter)
                    if used + size > quota_bytes:
                        raise JobValidationError(quota_message(submitter, quota_bytes, used, size))
                seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
                db.execute(
                    "INSERT INTO jobs (job_id, name, status, submit_time, submitter,"
                    " submitter_org, spec_json, package_sha256, package_size, num_rounds, seq,"
                    " stored_bytes, submitter_role, signature_json)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        job_id,
                        name,
                        jobstatus.SUBMITTED,
                        utc_now(),
                        submitter,
                        submitter_org,
                        json.dumps(dict(spec)),
                        package_sha256,
                        package_size,
                        num_rounds,
                        seq,
                        size,
                        submitter_role,
                        json.dumps(dict(signature)) if signature is not None else None,
                    ),
                )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if self._audit is not None:
            self._audit.record(
                "job.status",
                job_id=job_id,
                name=name,
                status=jobstatus.SUBMITTED,
                previous="",
                submitter=submitter,
                submitter_org=submitter_org,
                code_sha256=package_sha256,
                signer=str(signature["document"]["submitter"]) if signature else "",
            )
        return self.get(job_id)

    def update(self, job_id: str, **fields: Any) -> JobRecord:
        allowed = {
            "status",
            "start_time",
            "end_time",
            "sites",
            "current_round",
            "num_rounds",
            "error",
            "attempts",
        }
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown job fields: {sorted(unknown)}")
        cols = []
        values: list[Any] = []
        for key, value in fields.items():
            if key == "sites":
                cols.append("sites_json = ?")
                values.append(json.dumps(list(value)))
            elif key in _INT_FIELDS:
                cols.append(f"{key} = ?")
                values.append(self._int_or_none(job_id, key, value))
            else:
                cols.append(f"{key} = ?")
                values.append(value)
        with self._tx() as db:
            before = db.execute("SELECT status FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            cur = db.execute(
                f"UPDATE jobs SET {', '.join(cols)} WHERE job_id = ?", (*values, job_id)
            )
            if cur.rowcount == 0:
                raise NotFoundError(f"no job with id {job_id}")
        status = fields.get("status")
        if self._audit is not None and status is not None and status != before["status"]:
            self._audit.record(
                "job.status",
                job_id=job_id,
                status=status,
                previous=before["status"],
                **{k: fields[k] for k in ("error", "sites") if fields.get(k)},
            )
        return self.get(job_id)

    def delete(self, job_id: str) -> None:
        with self._tx() as db:
            cur = db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
            if cur.rowcount == 0:
                raise NotFoundError(f"no job with id {job_id}")
        if self._audit is not None:
            self._audit.record("job.deleted", job_id=job_id)
        # Row first, folder after: a crash in between leaves an orphan folder
        # that the next start-up sweeps, never a row without its files.
        shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)

    # -- reads --------------------------------------------------------------

    def submitter_bytes(self, submitter: str) -> int:
        """Stored bytes counted against ``submitter``'s quota."""
        with self._lock:
            return self._used_bytes(self._db, submitter)

    @staticmethod
    def _used_bytes(db: sqlite3.Connection, submitter: str) -> int:
        # Rows from before stored_bytes existed count their archive only.
        row = db.execute(
            "SELECT COALESCE(SUM(COALESCE(stored_bytes, package_size)), 0) FROM jobs"
            " WHERE submitter = ?",
            (submitter,),
        ).fetchone()
        return int(row[0])

    def count_by_status(self) -> dict[str, int]:
        """How many jobs the store holds in each status (a status with none is absent)."""
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {str(status): int(n) for status, n in rows}

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no job with id {job_id}")
        return self._record(row)

    def find(self, prefix: str) -> JobRecord:
        """A job by id or unique id prefix (as typed in a console)."""
        if not prefix:
            raise NotFoundError("no job id given")
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE job_id LIKE ? ESCAPE '\\' ORDER BY seq",
                (_like_prefix(prefix),),
            ).fetchall()
        if not rows:
            raise NotFoundError(f"no job with id {prefix}")
        if len(rows) > 1:
            raise NotFoundError(f"job id prefix {prefix} is ambiguous ({len(rows)} jobs)")
        return self._record(rows[0])

    def list(
        self,
        *,
        status: str | Sequence[str] | None = None,
        name: str | None = None,
        limit: int | None = None,
    ) -> list[JobRecord]:
        query = "SELECT * FROM jobs"
        where: list[str] = []
        args: list[Any] = []
        if status:
            statuses = [status] if isinstance(status, str) else list(status)
            clauses = []
            for s in statuses:
                if s.upper() == "FINISHED":  # every FINISHED:* state
                    clauses.append("status LIKE 'FINISHED:%'")
                else:
                    clauses.append("status = ?")
                    args.append(s.upper())
            where.append("(" + " OR ".join(clauses) + ")")
        if name:
            where.append("name LIKE ? ESCAPE '\\'")
            args.append(_like_prefix(name))
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY seq"
        if limit:
            query = f"SELECT * FROM ({query} DESC LIMIT {int(limit)}) ORDER BY seq"
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [self._record(r) for r in rows]

    # -- internals ----------------------------------------------------------

    def staging_folder(self, job_id: str | None = None) -> Path:
        """A fresh folder for a job being received, named by its future job id;
        adopted by create(), which adds its row. Until then it has no row, and
        nothing lists it: a crash leaves it for the start-up sweep.

        ``job_id``: the id the submitter chose and signed (a UUID), else a new
        one; ``JobValidationError`` if it is not a UUID or already in use.
        """
        if job_id is None:
            job_id = str(uuid.uuid4())
        elif not _is_uuid(job_id):
            raise JobValidationError(f"job id {job_id!r} is not a UUID")
        else:
            with self._lock:
                row = self._db.execute("SELECT 1 FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is not None:
                raise JobValidationError(f"job id {job_id} is already in use")
        path = self.jobs_dir / job_id
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            raise JobValidationError(f"job id {job_id} is already in use") from None
        return path

    def _refuse_orphaned_jobs(self, db_path: Path) -> None:
        """A new database beside existing job folders means the wrong state
        folder (a volume not mounted, a changed ``--state-dir``): the start-up
        sweep would delete every job. Refuse instead."""
        try:
            found = [p.name for p in self.jobs_dir.iterdir() if _is_uuid(p.name) and p.is_dir()]
        except FileNotFoundError:
            return
        if found:
            raise ConfigError(
                f"{db_path}: no job database, but {self.jobs_dir} holds {len(found)} job "
                f"folder(s) (e.g. {sorted(found)[0]}). Is the state folder the one this "
                "workspace was used with? Starting would delete those jobs; move store.db "
                "(with store.db-wal and store.db-shm) there, or remove the job folders"
            )

    def _record(self, row: sqlite3.Row) -> JobRecord:
        return JobRecord(
            job_id=row["job_id"],
            name=row["name"],
            status=row["status"],
            submit_time=row["submit_time"],
            start_time=row["start_time"],
            end_time=row["end_time"],
            submitter=row["submitter"],
            submitter_org=row["submitter_org"],
            spec=json.loads(row["spec_json"]),
            sites=json.loads(row["sites_json"]),
            current_round=row["current_round"],
            num_rounds=row["num_rounds"],
            error=row["error"],
            attempts=row["attempts"],
            package_sha256=row["package_sha256"],
            package_size=row["package_size"],
            folder=self.jobs_dir / row["job_id"],
            stored_bytes=(
                row["stored_bytes"] if row["stored_bytes"] is not None else row["package_size"]
            ),
            submitter_role=row["submitter_role"],
            signature=_signature(row["signature_json"]),
        )

    @staticmethod
    def _int_or_none(job_id: str, key: str, value: Any) -> int | None:
        # Progress numbers come from the workflow process, which runs job
        # code: a value SQLite cannot hold is dropped (NULL) with a warning
        # rather than failing the update that also records the job's status.
        try:
            return _sql_int(value, key)
        except ValueError as exc:
            log.warning("job %s: %s; stored as unknown", job_id, exc)
            return None

    class _Tx:
        def __init__(self, store: JobStore) -> None:
            self.store = store

        def __enter__(self) -> sqlite3.Connection:
            self.store._lock.acquire()
            self.store._db.execute("BEGIN IMMEDIATE")
            return self.store._db

        def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
            try:
                self.store._db.execute("ROLLBACK" if exc_type else "COMMIT")
            finally:
                self.store._lock.release()

    def _tx(self) -> JobStore._Tx:
        return JobStore._Tx(self)

    def _migrate(self) -> None:
        """Bring a store made by an older version up to this schema."""
        with self._lock:
            cols = {r[1] for r in self._db.execute("PRAGMA table_info(jobs)")}
            if "stored_bytes" not in cols:
                self._db.execute("ALTER TABLE jobs ADD COLUMN stored_bytes INTEGER")
            if "submitter_role" not in cols:
                self._db.execute(
                    "ALTER TABLE jobs ADD COLUMN submitter_role TEXT NOT NULL DEFAULT ''"
                )
            if "signature_json" not in cols:
                # Jobs from before signed jobs keep a NULL: listed as before,
                # refused by the sites (they are not signed).
                self._db.execute("ALTER TABLE jobs ADD COLUMN signature_json TEXT")

    def _sweep(self) -> None:
        with self._lock:
            known = {r[0] for r in self._db.execute("SELECT job_id FROM jobs")}
        for entry in self._iter_dirs():
            if entry.name not in known:
                log.warning(
                    "removing job folder with no record (interrupted submit/delete): %s", entry
                )
                shutil.rmtree(entry, ignore_errors=True)

    def _iter_dirs(self) -> Iterator[Path]:
        yield from (p for p in self.jobs_dir.iterdir() if p.is_dir())


def _signature(text: str | None) -> Mapping[str, Any] | None:
    """A row's stored signature; one unreadable (a damaged row) reads as none,
    which every site refuses, rather than hiding the job from the listing."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        log.warning("a job's stored signature is not JSON; the job counts as unsigned")
        return None
    return value if isinstance(value, dict) else None


def _is_uuid(name: str) -> bool:
    try:
        return str(uuid.UUID(name)) == name
    except ValueError:
        return False
