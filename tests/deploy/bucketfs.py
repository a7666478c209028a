"""A FUSE passthrough file system with Cloud Storage FUSE's folder rules.

    python tests/deploy/bucketfs.py BACKING_DIR MOUNTPOINT   # foreground; unmount to stop

Everything is passed through to ``BACKING_DIR`` except what a bucket mounted
by Cloud Storage FUSE (``gcsfuse``, the GKE CSI driver's sidecar) refuses:

* ``rename(2)`` of a folder that is not empty fails with ``EMFILE``, as
  gcsfuse does past its ``rename-dir-limit`` (default 0, so any non-empty
  folder) on a flat bucket; files and empty folders rename;
* ``link(2)`` (hard links) fails with ``ENOTSUP``: objects have no inodes.

Each refusal is appended to ``BACKING_DIR/../refused.log`` so a test can see
the rule was met, not just assume it. Locks (``flock``/``fcntl``) are not
implemented here, so the kernel keeps them local, as with gcsfuse.

Needs the ``mfusepy`` binding and libfuse 3 (Debian: ``fuse3``), and root (or
``/dev/fuse`` access) to mount.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
from pathlib import Path
from typing import Any

import mfusepy as fuse

_STAT_KEYS = (
    "st_atime_ns",
    "st_ctime_ns",
    "st_gid",
    "st_mode",
    "st_mtime_ns",
    "st_nlink",
    "st_size",
    "st_uid",
    "st_ino",
)


class BucketLikeFS(fuse.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, root: str, refused_log: str) -> None:
        self.root = os.path.realpath(root)
        self._refused_log = refused_log
        self._log_lock = threading.Lock()

    def _p(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def _refuse(self, op: str, path: str, code: int) -> None:
        with self._log_lock, open(self._refused_log, "a", encoding="utf-8") as log:
            log.write(f"{op} {path} {errno.errorcode[code]}\n")
        raise fuse.FuseOSError(code)

    # -- the rules ------------------------------------------------------------------

    def rename(self, old: str, new: str) -> int:
        src = self._p(old)
        if os.path.isdir(src) and not os.path.islink(src) and os.listdir(src):
            self._refuse("rename", old, errno.EMFILE)
        os.rename(src, self._p(new))
        return 0

    def link(self, target: str, source: str) -> int:
        self._refuse("link", target, errno.ENOTSUP)
        return 0

    # -- passthrough ----------------------------------------------------------------

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._p(path), amode):
            raise fuse.FuseOSError(errno.EACCES)
        return 0

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        try:
            st = os.lstat(self._p(path))
        except OSError as exc:
            raise fuse.FuseOSError(exc.errno) from None
        attrs = {key: getattr(st, key) for key in _STAT_KEYS}
        attrs["st_atime"] = attrs.pop("st_atime_ns")
        attrs["st_ctime"] = attrs.pop("st_ctime_ns")
        attrs["st_mtime"] = attrs.pop("st_mtime_ns")
        return attrs

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._p(path))]

    def readlink(self, path: str) -> str:
        return os.readlink(self._p(path))

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._p(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._p(path))
        return 0

    def unlink(self, path: str) -> int:
        os.unlink(self._p(path))
        return 0

    def symlink(self, target: str, source: str) -> int:
        os.symlink(source, self._p(target))
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._p(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self._p(path), uid, gid, follow_symlinks=False)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        os.utime(self._p(path), ns=times, follow_symlinks=False)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self._p(path))
        return {
            key: getattr(st, key)
            for key in (
                "f_bavail",
                "f_bfree",
                "f_blocks",
                "f_bsize",
                "f_favail",
                "f_ffree",
                "f_files",
                "f_flag",
                "f_frsize",
                "f_namemax",
            )
        }

    def open(self, path: str, flags: int) -> int:
        return os.open(self._p(path), flags)

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        return os.open(self._p(path), os.O_RDWR | os.O_CREAT, mode)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        if fh is not None:
            os.ftruncate(fh, length)
        else:
            os.truncate(self._p(path), length)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        os.fsync(fh)
        return 0

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0


def main(argv: list[str]) -> int:
    backing, mountpoint = argv[1], argv[2]
    refused_log = str(Path(backing).resolve().parent / "refused.log")
    fuse.FUSE(
        BucketLikeFS(backing, refused_log),
        mountpoint,
        foreground=True,
        allow_other=True,
        default_permissions=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
