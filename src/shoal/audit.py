"""The audit trail: one hash-chained JSON line per security-relevant event.

    trail = AuditTrail(state_dir / "audit" / "audit.jsonl")
    trail.record("job.refused", job_id=job_id, code_sha256=digest, signer="", reason=why)
    report = verify_trail(state_dir / "audit" / "audit.jsonl")   # or `shoal audit verify`
    report.ok, report.problem                                     # "line 7 of audit.jsonl: ..."

Each line is canonical JSON (sorted keys, no spaces) with ``seq`` (1, 2, ...
across every file of the trail), ``time`` (UTC), ``event``, the event's own
fields, and ``prev``: the SHA-256 of the previous line's bytes (64 zeros for
the first line of a trail). Editing, inserting, reordering or deleting a line
breaks the chain at the next line, which :func:`verify_trail` names.

The chain alone cannot show that lines were cut off the end, so the trail
keeps an *anchor* beside it (``audit.jsonl.anchor``: the ``seq`` and hash of
the last line written durably). A trail shorter than its anchor, or whose line
at the anchor's ``seq`` has another hash, fails verification. Whoever can
write the folder can rewrite the anchor too: for that, take the head (``seq``
and hash, shown by the admin ``audit`` command) somewhere else now and then,
and check it later with ``shoal audit verify --head SEQ:HASH``.

Rotation: once the active file would pass ``max_bytes`` it is renamed
``audit.jsonl.N`` (N = 1, 2, ... oldest first) and the new file's first line,
``audit.rotated``, chains to the old file's last line and names it, so
verification walks every file as one chain.

Durability: ``record()`` appends under a lock (threads) and an ``flock``
(processes) and, for a durable event (the default), fsyncs the file before the
anchor moves: an event that was acknowledged survives a power cut. Read-only
admin commands are recorded with ``durable=False`` (written, not synced; a
crash may lose the last few of them, never a line before a durable one), so a
console polling ``get_job_meta`` does not cost a disk flush every half second.
A line torn by a crash mid-write is cut off at the next open and reported in
an ``audit.recovered`` event (its length and hash), so the chain goes on.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from shoal.errors import ConfigError

__all__ = [
    "ANCHOR_SUFFIX",
    "AuditSink",
    "DEFAULT_MAX_BYTES",
    "GENESIS",
    "AuditTrail",
    "ConfigWatch",
    "Head",
    "VerifyReport",
    "read_events",
    "trail_files",
    "verify_trail",
]

log = logging.getLogger(__name__)

#: ``prev`` of a trail's very first line.
GENESIS = "0" * 64
#: The active file is rotated before it passes this size.
DEFAULT_MAX_BYTES = 16 * 2**20
#: The anchor file is the trail's path plus this.
ANCHOR_SUFFIX = ".anchor"
#: Keys every line has; an event's own fields may not use them.
RESERVED = frozenset({"seq", "time", "event", "prev"})
#: A string field longer than this is cut (with a note of its full length):
#: a line must stay small enough to read back from the file's tail.
MAX_FIELD_CHARS = 2000
#: How much of the file's end is read to find the last line at open.
_TAIL_BYTES = 256 * 1024


class AuditSink(Protocol):
    """What a part that reports events needs of a trail: ``record`` only."""

    def record(self, event: str, *, durable: bool = True, **fields: Any) -> Any: ...


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _clip(value: Any) -> Any:
    """JSON-able ``value`` with long strings cut; anything else becomes its str."""
    if isinstance(value, str):
        if len(value) > MAX_FIELD_CHARS:
            return f"{value[:MAX_FIELD_CHARS]}... ({len(value)} chars)"
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [_clip(v) for v in value[:200]]
    if isinstance(value, dict):
        return {str(k): _clip(v) for k, v in list(value.items())[:200]}
    return _clip(str(value))


@dataclass(frozen=True)
class Head:
    """Where a trail ends: its last line's ``seq`` and hash."""

    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> Head:
        """``SEQ:HASH`` as :meth:`__str__` writes it; ConfigError otherwise."""
        seq, _, digest = text.partition(":")
        if (
            not seq.isdigit()
            or len(digest) != 64
            or not all(c in "0123456789abcdef" for c in digest)
        ):
            raise ConfigError(f"head {text!r}: expected SEQ:SHA256 (e.g. 12:3fa4...)")
        return cls(int(seq), digest)


def trail_files(path: Path) -> list[Path]:
    """The trail's files in chain order: rotated ``path.1``, ``path.2``, ... then ``path``."""
    rotated = []
    if path.parent.is_dir():
        for p in path.parent.iterdir():
            suffix = p.name[len(path.name) + 1 :]
            if p.name.startswith(path.name + ".") and suffix.isdigit():
                rotated.append((int(suffix), p))
    files = [p for _, p in sorted(rotated)]
    if path.exists():
        files.append(path)
    return files


def _read_anchor(path: Path) -> Head | None:
    anchor = path.with_name(path.name + ANCHOR_SUFFIX)
    try:
        doc = json.loads(anchor.read_text())
        return Head(int(doc["seq"]), str(doc["hash"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{anchor}: unreadable anchor: {exc}") from None


class AuditTrail:
    """An append-only, hash-chained event log; safe to share between threads.

    ``actor`` names who writes it (``server1``, ``site-1``) in every line's
    ``by`` field, so a line copied between trails still says where it came from.
    """

    def __init__(self, path: Path, *, actor: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 4096:
            raise ConfigError(f"audit max_bytes must be at least 4096, got {max_bytes}")
        self.path = Path(path)
        self.actor = actor
        self.max_bytes = max_bytes
        self._anchor = self.path.with_name(self.path.name + ANCHOR_SUFFIX)
        self._lock = threading.Lock()
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        #: (inode, size) of the active file after our last write: when it is
        #: still so, no other writer appended and the cached head holds.
        self._where: tuple[int, int] | None = None
        #: Events that could not be written since the last one that was.
        self._lost = 0
        with self._locked() as f:
            self._head, torn = self._load_head(f)
        if torn is not None:
            self.record("audit.recovered", torn_bytes=len(torn), torn_sha256=_line_hash(torn))
            log.warning(
                "audit trail %s: cut %d bytes of an unfinished last line (a crash mid-write)",
                self.path,
                len(torn),
            )

    @property
    def head(self) -> Head:
        """The last line written: its ``seq`` and hash."""
        with self._lock:
            return self._head

    def record(self, event: str, *, durable: bool = True, **fields: Any) -> Head:
        """Append one event; returns the new head. ``durable=False``: no fsync.

        A trail that cannot be written (a full disk) does not stop the daemon:
        the event is logged as an ERROR, and the first line written once it
        can write again is ``audit.lost`` with the number of events lost.
        """
        clash = RESERVED & set(fields)
        if clash:
            raise ValueError(f"audit fields may not be named {sorted(clash)}")
        body = {k: _clip(v) for k, v in fields.items()}
        body.setdefault("by", self.actor)
        with self._lock:
            try:
                if self._lost:
                    self._append(
                        "audit.lost", {"by": self.actor, "lost_events": self._lost}, durable=True
                    )
                    self._lost = 0
                self._append(event, body, durable=durable)
            except OSError as exc:
                self._lost += 1
                log.error(
                    "audit trail %s: %s event not written (%s); %d lost so far",
                    self.path,
                    event,
                    exc.strerror or exc,
                    self._lost,
                )
            return self._head

    def _append(self, event: str, body: dict[str, Any], *, durable: bool) -> None:
        f = self._open_locked()
        try:
            # Another process may have appended since (a second writer on
            # the same trail): its lines are part of the chain.
            st = os.fstat(f.fileno())
            if (st.st_ino, st.st_size) != self._where:
                self._head, _ = self._load_head(f)
            else:
                f.seek(0, os.SEEK_END)
            line = self._line(event, body)
            if f.tell() and f.tell() + len(line) + 1 > self.max_bytes:
                f = self._rotate(f)
                line = self._line(event, body)
            end = f.tell()
            try:
                f.write(line + b"\n")
            except OSError:
                os.ftruncate(f.fileno(), end)  # no half line left behind
                raise
            self._head = Head(self._head.seq + 1, _line_hash(line))
            st = os.fstat(f.fileno())
            self._where = (st.st_ino, st.st_size)
            if durable:
                try:
                    os.fsync(f.fileno())
                    self._write_anchor()
                except OSError as exc:
                    # The line is in the file (and chained); only its
                    # durability and the anchor's move are in doubt.
                    log.error(
                        "audit trail %s: %s event written but not synced (%s)",
                        self.path,
                        event,
                        exc.strerror or exc,
                    )
        finally:
            f.close()

    # -- internals ----------------------------------------------------------------

    def _line(self, event: str, body: dict[str, Any]) -> bytes:
        return _canonical(
            {
                **body,
                "seq": self._head.seq + 1,
                "time": _utc_now(),
                "event": event,
                "prev": self._head.hash,
            }
        )

    def _open_locked(self) -> Any:
        """The active file, open for appending, under an exclusive ``flock``."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A writer that rotated while we waited renamed the file we hold.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return os.fdopen(fd, "r+b", buffering=0)
            os.close(fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Any]:
        f = self._open_locked()
        try:
            yield f
        finally:
            f.close()

    def _load_head(self, f: Any) -> tuple[Head, bytes | None]:
        """The head from the file's last line (or the rotated file's before
        it); cuts a torn last line off and returns it. Leaves ``f`` at its end."""
        size = f.seek(0, os.SEEK_END)
        start = max(0, size - _TAIL_BYTES)
        f.seek(start)
        tail = f.read(size - start)
        torn: bytes | None = None
        if tail and not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n") + 1
            torn = tail[cut:]
            os.ftruncate(f.fileno(), start + cut)
            tail = tail[:cut]
        f.seek(0, os.SEEK_END)
        if not tail:
            rotated = trail_files(self.path)[:-1]
            return (_last_head(rotated[-1]) if rotated else Head(0, GENESIS)), torn
        last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        try:
            seq = int(json.loads(last)["seq"])
        except (ValueError, KeyError, TypeError):
            raise ConfigError(
                f"{self.path}: the last line is not an audit event; "
                "run `shoal audit verify` on it before writing more"
            ) from None
        return Head(seq, _line_hash(last)), torn

    def _rotate(self, f: Any) -> Any:
        """Rename the full file to the next ``.N``; the new file starts with an
        ``audit.rotated`` line chained to the old file's last line."""
        rotated = trail_files(self.path)[:-1]
        number = int(rotated[-1].name.rsplit(".", 1)[1]) + 1 if rotated else 1
        target = self.path.with_name(f"{self.path.name}.{number}")
        os.fsync(f.fileno())
        os.rename(self.path, target)
        new = self._open_locked()
        f.close()  # only now: a waiting writer finds the new file
        previous = self._head
        header = self._line(
            "audit.rotated",
            {"by": self.actor, "previous_file": target.name, "previous_head": str(previous)},
        )
        new.write(header + b"\n")
        self._head = Head(previous.seq + 1, _line_hash(header))
        log.info("audit trail %s: full, continued from %s", self.path, target.name)
        return new

    def _write_anchor(self) -> None:
        tmp = self._anchor.with_name(self._anchor.name + ".tmp")
        data = json.dumps({"seq": self._head.seq, "hash": self._head.hash, "file": self.path.name})
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._anchor)


def _last_head(path: Path) -> Head:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - _TAIL_BYTES))
        last = f.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    try:
        return Head(int(json.loads(last)["seq"]), _line_hash(last))
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path}: the last line is not an audit event") from None


# -- verification ---------------------------------------------------------------


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify_trail` found."""

    ok: bool
    #: Lines checked, across every file.
    lines: int
    #: The last good line's ``seq`` and hash.
    head: Head
    #: The files walked, in chain order.
    files: tuple[Path, ...]
    #: The first problem, naming its file and line (empty when ``ok``).
    problem: str = ""
    #: The anchor's head, if there was one.
    anchor: Head | None = None


def verify_trail(path: Path, *, expect_head: Head | None = None) -> VerifyReport:
    """Walk every file of the trail at ``path`` and check the chain and the anchor.

    ``expect_head``: a head taken earlier elsewhere; the trail must still
    contain that line unchanged.
    """
    path = Path(path)
    files = tuple(trail_files(path))
    if not files:
        raise ConfigError(f"{path}: no audit trail there")
    anchor = _read_anchor(path)
    prev = GENESIS
    seq = 0
    count = 0
    seen: dict[int, str] = {}

    def fail(problem: str) -> VerifyReport:
        return VerifyReport(False, count, Head(seq, prev), files, problem, anchor)

    for f in files:
        with open(f, "rb") as fh:
            data = fh.read()
        if data and not data.endswith(b"\n"):
            n = data.count(b"\n") + 1
            return fail(f"line {n} of {f.name}: unfinished last line (no newline)")
        for number, line in enumerate(data.split(b"\n")[:-1] if data else [], start=1):
            where = f"line {number} of {f.name}"
            try:
                doc = json.loads(line)
                line_seq, line_prev = int(doc["seq"]), str(doc["prev"])
                str(doc["event"])
            except (ValueError, KeyError, TypeError):
                return fail(f"{where}: not an audit event")
            if line_prev != prev:
                return fail(
                    f"{where}: chain broken: prev is {line_prev[:12]}..., the line before "
                    f"hashes to {prev[:12]}... (a line edited, inserted, reordered or deleted)"
                )
            if line_seq != seq + 1:
                return fail(f"{where}: seq {line_seq} after {seq}")
            if number == 1 and f != files[0] and doc["event"] != "audit.rotated":
                return fail(f"{where}: a rotated file must start with audit.rotated")
            prev, seq = _line_hash(line), line_seq
            count += 1
            if (anchor and seq == anchor.seq) or (expect_head and seq == expect_head.seq):
                seen[seq] = prev
    for name, want in (("anchor", anchor), ("expected head", expect_head)):
        if want is None:
            continue
        if want.seq > seq:
            return fail(
                f"the trail ends at seq {seq} but its {name} says {want.seq}: "
                f"{want.seq - seq} line(s) cut off the end"
            )
        if seen.get(want.seq) != want.hash:
            return fail(f"line with seq {want.seq} does not match the {name} ({want.hash[:12]}...)")
    return VerifyReport(True, count, Head(seq, prev), files, "", anchor)


def read_events(
    path: Path,
    *,
    since: str | None = None,
    limit: int | None = None,
    match: dict[str, str] | None = None,
    where: Callable[[dict[str, Any]], bool] | None = None,
) -> list[dict[str, Any]]:
    """The trail's events, oldest first: those at or after ``since`` (ISO time),
    whose fields equal ``match``'s (a list field matches if it holds the
    value) and for which ``where`` is true, the last ``limit`` of them.
    Reads files newest first and stops once it has ``limit`` events."""
    out: list[dict[str, Any]] = []
    for f in reversed(trail_files(Path(path))):
        with open(f, "rb") as fh:
            lines = fh.read().split(b"\n")
        older_than_since = False
        for line in reversed(lines):
            if not line:
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if since and str(doc.get("time", "")) < since:
                older_than_since = True
                break
            if match and not all(_matches(doc.get(k), v) for k, v in match.items()):
                continue
            if where is not None and not where(doc):
                continue
            out.append(doc)
            if limit and len(out) >= limit:
                return out[::-1]
        if older_than_since:
            break
    return out[::-1]


def _matches(value: Any, wanted: str) -> bool:
    if isinstance(value, list):
        return wanted in value
    return value == wanted


# -- configuration changes ----------------------------------------------------------


class ConfigWatch:
    """Records a file's content hash in the trail whenever it changes.

        watch = ConfigWatch(trail, {"filters": kit / "local" / "filters.yml"})
        watch.check()   # at start ("config.loaded"), then wherever the file is re-read

    A file that appears, changes or goes away is one ``config.changed`` event
    with its name, path, old and new SHA-256 (``""``: no file). Checking is a
    ``stat``; the file is hashed only when its size or mtime moved.
    """

    def __init__(self, trail: AuditTrail, files: dict[str, Path]) -> None:
        self._trail = trail
        self._files = dict(files)
        self._stat: dict[str, tuple[int, int] | None] = {}
        self._digest: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, name: str, path: Path) -> None:
        """Watch one more file (a policy file another part of the daemon reads)."""
        with self._lock:
            self._files[name] = path

    def check(self) -> None:
        with self._lock:
            for name, path in self._files.items():
                try:
                    st = path.stat()
                    stamp: tuple[int, int] | None = (st.st_size, st.st_mtime_ns)
                except OSError:
                    stamp = None
                first = name not in self._stat
                if not first and stamp == self._stat[name]:
                    continue
                self._stat[name] = stamp
                digest = _file_digest(path) if stamp is not None else ""
                old = self._digest.get(name)
                self._digest[name] = digest
                if first:
                    self._trail.record("config.loaded", name=name, path=str(path), sha256=digest)
                elif digest != old:
                    self._trail.record(
                        "config.changed",
                        name=name,
                        path=str(path),
                        sha256=digest,
                        previous_sha256=old or "",
                    )


def _file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""
