"""Job archives: deterministic packing and hostile-input-proof extraction.

    pack_job(Path("hello-tf2"), Path("hello-tf2.zip"))
    safe_extract(Path("hello-tf2.zip"), Path("jobs/123/job"))

An archive comes from the network, so extraction trusts nothing in it: names
are checked before anything is written, sizes are measured while
decompressing (the header's sizes may lie), and the result appears at
``dest`` only when everything passed; a refused archive leaves ``dest``
absent. Every refusal is a JobValidationError saying why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from shoal.errors import JobValidationError

__all__ = [
    "MAX_ARCHIVE_BYTES",
    "MAX_FILES",
    "MAX_RATIO",
    "MAX_TOTAL_BYTES",
    "RATIO_GRACE_BYTES",
    "TOTAL_RATIO_GRACE_BYTES",
    "ExtractStats",
    "check_archive_size",
    "pack_job",
    "safe_extract",
]

logger = logging.getLogger(__name__)

#: Largest job archive accepted (the compressed file itself).
MAX_ARCHIVE_BYTES = 512 * 1024 * 1024
#: Largest total of uncompressed bytes an archive may expand to. A job is
#: code and small files (data stays at the sites); the server and every site
#: unpack it, so this is also what one submit can cost each of them on disk.
MAX_TOTAL_BYTES = 256 * 1024 * 1024
#: Most entries (files and folders) an archive may hold.
MAX_FILES = 10_000
#: Highest compression ratio (uncompressed / compressed) of one entry, and of
#: the whole archive (total uncompressed / the archive's size).
MAX_RATIO = 200
#: Entries expanding to at most this many bytes are exempt from the ratio test:
#: a small file of repetitive text legitimately compresses far better than 200x.
RATIO_GRACE_BYTES = 1024 * 1024
#: Archives expanding to at most this many bytes in total are exempt from the
#: whole-archive ratio test. Without that test, many entries each under
#: RATIO_GRACE_BYTES (1,900 MiB of zeros in a 2 MB upload) escape the
#: per-entry one.
TOTAL_RATIO_GRACE_BYTES = 16 * 1024 * 1024

_CHUNK = 1024 * 1024
_SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".pytest_cache"}
_SKIP_SUFFIXES = (".pyc", ".pyo")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_DRIVE_RE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ExtractStats:
    """What :func:`safe_extract` wrote."""

    #: Regular files written.
    files: int
    #: Uncompressed bytes written.
    total_bytes: int


def check_archive_size(path: Path, max_bytes: int = MAX_ARCHIVE_BYTES) -> int:
    """The archive's size in bytes; JobValidationError when over ``max_bytes``."""
    try:
        size = Path(path).stat().st_size
    except OSError as exc:
        raise JobValidationError(f"archive {path}: cannot read: {exc.strerror}") from None
    if size > max_bytes:
        raise JobValidationError(f"archive is {size} bytes, more than the {max_bytes}-byte limit")
    return size


def _collect(folder: Path) -> list[tuple[str, Path]]:
    """(archive name, real file) of every file to pack, sorted by name."""
    root = folder.resolve()
    out: list[tuple[str, Path]] = []
    visited: set[Path] = set()

    def walk(real_dir: Path, prefix: PurePosixPath) -> None:
        if real_dir in visited:
            raise JobValidationError(f"{prefix}: a link loops back into the job")
        visited.add(real_dir)
        for entry in sorted(real_dir.iterdir(), key=lambda p: p.name):
            rel = prefix / entry.name
            if entry.name in _SKIP_DIRS or entry.name.endswith(_SKIP_SUFFIXES):
                continue
            real = entry.resolve()
            if entry.is_symlink() and not real.is_relative_to(root):
                raise JobValidationError(f"{rel}: is a link to {real}, outside the job")
            if real.is_dir():
                walk(real, rel)
            elif real.is_file():
                out.append((rel.as_posix(), real))
            else:
                raise JobValidationError(f"{rel}: not a regular file or folder")
        visited.discard(real_dir)

    walk(root, PurePosixPath())
    return sorted(out)


def pack_job(folder: Path, dest_zip: Path, *, max_archive_bytes: int = MAX_ARCHIVE_BYTES) -> Path:
    """Zip a job folder (``job.yml`` and ``app/`` at the archive root).

    Deterministic: same files, same bytes (sorted names, fixed timestamps and
    permissions). Links inside the job are stored as the files they point to;
    a link pointing outside the job is refused. ``__pycache__``, ``*.pyc`` and
    VCS folders are left out. Written atomically.
    """
    folder = Path(folder)
    if not (folder / "job.yml").is_file():
        raise JobValidationError(f"{folder}: not a job folder (no job.yml)")
    files = _collect(folder)
    dest_zip = Path(dest_zip)
    dest_zip.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest_zip.name}.", dir=dest_zip.parent)
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w") as zf:
            for name, real in files:
                info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                executable = os.access(real, os.X_OK)
                info.external_attr = (stat.S_IFREG | (0o755 if executable else 0o644)) << 16
                info.create_system = 3  # unix, so the mode bits above are honoured
                with real.open("rb") as src, zf.open(info, "w") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
        check_archive_size(Path(tmp_name), max_archive_bytes)
        os.replace(tmp_name, dest_zip)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    logger.info("packed job %s: %d files -> %s", folder, len(files), dest_zip)
    return dest_zip


def _check_name(info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The entry's path parts, or JobValidationError when it could escape."""
    name = info.filename
    if not name or "\x00" in name:
        raise JobValidationError(f"archive entry {name!r}: empty or NUL in name")
    if "\\" in name:
        raise JobValidationError(f"archive entry {name!r}: backslash in path")
    if name.startswith("/"):
        raise JobValidationError(f"archive entry {name!r}: absolute path")
    if _DRIVE_RE.match(name) or ":" in name:
        raise JobValidationError(f"archive entry {name!r}: drive letter or ':' in path")
    parts = tuple(name.rstrip("/").split("/"))
    if any(p == ".." for p in parts):
        raise JobValidationError(f"archive entry {name!r}: '..' in path")
    if any(p in ("", ".") for p in parts):
        raise JobValidationError(f"archive entry {name!r}: empty or '.' path component")
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        raise JobValidationError(f"archive entry {name!r}: symbolic links are not allowed")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise JobValidationError(f"archive entry {name!r}: not a regular file or folder")
    if info.flag_bits & 0x1:
        raise JobValidationError(f"archive entry {name!r}: encrypted entries are not allowed")
    return parts


def _total_allowed(archive_size: int, *, max_total_bytes: int, max_ratio: float) -> int:
    """Most bytes the whole archive may expand to: the cap, and beyond the grace
    ``max_ratio`` times the archive's size."""
    return int(min(max_total_bytes, max(TOTAL_RATIO_GRACE_BYTES, max_ratio * archive_size)))


def _too_big(total: int, *, archive_size: int, max_total_bytes: int, max_ratio: float) -> str:
    """Why ``total`` uncompressed bytes are refused ("" when they are not)."""
    if total > max_total_bytes:
        return (
            f"archive expands to more than {max_total_bytes} bytes "
            f"({max_total_bytes // 2**20} MiB, the limit of a job's unpacked size)"
        )
    if total > _total_allowed(archive_size, max_total_bytes=max_total_bytes, max_ratio=max_ratio):
        return (
            f"archive of {archive_size} bytes expands to {total} bytes or more: overall "
            f"compression ratio above {max_ratio} (zip bomb?)"
        )
    return ""


def _plan(
    infos: list[zipfile.ZipInfo],
    *,
    archive_size: int,
    max_total_bytes: int,
    max_files: int,
    max_ratio: float,
) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    if len(infos) > max_files:
        raise JobValidationError(f"archive has {len(infos)} entries, more than {max_files}")
    plan: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
    files: set[tuple[str, ...]] = set()
    dirs: set[tuple[str, ...]] = set()
    declared = 0
    for info in infos:
        parts = _check_name(info)
        is_dir = info.is_dir()
        if parts in files:
            raise JobValidationError(f"archive entry {info.filename!r}: duplicate name")
        for i in range(1, len(parts)):
            if parts[:i] in files:
                raise JobValidationError(
                    f"archive entry {info.filename!r}: {'/'.join(parts[:i])!r} is a file"
                )
        if is_dir:
            dirs.add(parts)
        else:
            # Every folder entry's prefixes are in ``dirs`` too, so this also
            # catches a file named like a parent of an earlier entry.
            if parts in dirs:
                raise JobValidationError(f"archive entry {info.filename!r}: also used as a folder")
            files.add(parts)
            declared += info.file_size
            # From the central directory, before anything is written; the
            # sizes may lie, so _extract_all measures again.
            problem = _too_big(
                declared,
                archive_size=archive_size,
                max_total_bytes=max_total_bytes,
                max_ratio=max_ratio,
            )
            if problem:
                raise JobValidationError(problem)
            if info.file_size > RATIO_GRACE_BYTES and info.file_size > max_ratio * max(
                info.compress_size, 1
            ):
                raise JobValidationError(
                    f"archive entry {info.filename!r}: compression ratio above {max_ratio} "
                    "(zip bomb?)"
                )
        for i in range(1, len(parts)):
            dirs.add(parts[:i])
        plan.append((info, parts))
    return plan


def _extract_all(
    zf: zipfile.ZipFile,
    plan: list[tuple[zipfile.ZipInfo, tuple[str, ...]]],
    tmp: Path,
    *,
    archive_size: int,
    max_total_bytes: int,
    max_ratio: float,
) -> ExtractStats:
    total_allowed = _total_allowed(
        archive_size, max_total_bytes=max_total_bytes, max_ratio=max_ratio
    )
    total = 0
    count = 0
    for info, parts in plan:
        target = tmp.joinpath(*parts)
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        mode = (info.external_attr >> 16) & 0o777
        # Owner only: a job's files are its code and data (the folder they land
        # in is private too); only the executable bit is taken from the archive.
        perm = 0o700 if mode & 0o100 else 0o600
        written = 0
        allowed = max(RATIO_GRACE_BYTES, max_ratio * max(info.compress_size, 1))
        with zf.open(info) as src, open(target, "xb") as dst:
            while True:
                chunk = src.read(_CHUNK)
                if not chunk:
                    break
                written += len(chunk)
                total += len(chunk)
                # Measured, not declared: a header may understate its sizes.
                if written > info.file_size:
                    raise JobValidationError(
                        f"archive entry {info.filename!r}: larger than its header says"
                    )
                if total > total_allowed:
                    raise JobValidationError(
                        _too_big(
                            total,
                            archive_size=archive_size,
                            max_total_bytes=max_total_bytes,
                            max_ratio=max_ratio,
                        )
                    )
                if written > allowed:
                    raise JobValidationError(
                        f"archive entry {info.filename!r}: compression ratio above "
                        f"{max_ratio} (zip bomb?)"
                    )
                dst.write(chunk)
        os.chmod(target, perm)
        count += 1
    return ExtractStats(files=count, total_bytes=total)


def safe_extract(
    zip_path: Path,
    dest: Path,
    *,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_files: int = MAX_FILES,
    max_ratio: float = MAX_RATIO,
    max_archive_bytes: int = MAX_ARCHIVE_BYTES,
) -> ExtractStats:
    """Extract ``zip_path`` into the new folder ``dest``, refusing anything unsafe.

    Refused: archives over ``max_archive_bytes``; absolute paths, ``..``,
    drive letters, backslashes; links and special files; encrypted entries;
    duplicate names; more than ``max_files`` entries; more than
    ``max_total_bytes`` once uncompressed; an entry over
    :data:`RATIO_GRACE_BYTES` whose compression ratio exceeds ``max_ratio``;
    an archive expanding past :data:`TOTAL_RATIO_GRACE_BYTES` in total at an
    overall ratio (total uncompressed / archive size) above ``max_ratio``;
    corrupt data. Sizes and ratios are checked from the central directory
    before anything is written, and measured again while writing. A refusal
    leaves ``dest`` absent: it is removed again.

    Files are written straight into ``dest``, never into a temporary folder
    renamed into place: a bucket mounted with Cloud Storage FUSE refuses to
    rename a non-empty folder. A crash mid-way can leave a partial ``dest``;
    every caller extracts into a folder it owns and sweeps (the server's job
    folder before its row exists, a site's job folder it re-extracts).
    """
    zip_path = Path(zip_path)
    dest = Path(dest)
    if dest.exists() or dest.is_symlink():
        raise JobValidationError(f"{dest}: already exists")
    archive_size = check_archive_size(zip_path, max_archive_bytes)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        dest.mkdir(mode=0o700)
    except FileExistsError:
        raise JobValidationError(f"{dest}: already exists") from None
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                plan = _plan(
                    zf.infolist(),
                    archive_size=archive_size,
                    max_total_bytes=max_total_bytes,
                    max_files=max_files,
                    max_ratio=max_ratio,
                )
                stats = _extract_all(
                    zf,
                    plan,
                    dest,
                    archive_size=archive_size,
                    max_total_bytes=max_total_bytes,
                    max_ratio=max_ratio,
                )
        except JobValidationError:
            raise
        except Exception as exc:
            # zipfile, zlib, bz2 and lzma raise a zoo of types on corrupt input
            # (BadZipFile, EOFError, ValueError, NotImplementedError, ...). The
            # input is untrusted: any of them means "refused", never a crash.
            raise JobValidationError(
                f"archive is corrupt or unsupported: {type(exc).__name__}: {exc}"
            ) from None
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    logger.info(
        "extracted %s: %d files, %d bytes -> %s", zip_path, stats.files, stats.total_bytes, dest
    )
    return stats
