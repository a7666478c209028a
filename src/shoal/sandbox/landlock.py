"""Landlock, the Linux kernel's unprivileged file-access sandbox, through ctypes.

Landlock (Linux 5.13+) lets a process drop, for itself and everything it
execs, every file access not granted by a rule: "read beneath /usr",
"read and write beneath this job's folder". It needs no privilege, so it
confines job code in a non-root container as well as on a laptop. The
kernel's ABI version says which rights it knows; rights it does not know
are simply not handled (a 5.13 kernel cannot refuse ``truncate``).

    ruleset = Ruleset(abi())
    ruleset.allow(Path("/usr"), ruleset.read)
    ruleset.allow(job_dir, ruleset.read | ruleset.write)
    ruleset.restrict_self()        # this thread and whatever it execs

Only the three system calls and the two structures of the kernel's uapi
header are used (``include/uapi/linux/landlock.h``); the numbers are the
same on every architecture (asm-generic).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from pathlib import Path

__all__ = ["LandlockError", "Ruleset", "abi"]

_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# Filesystem rights, by the ABI that introduced them.
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
#: Rights that make sense on a file (a rule on a file may hold no others).
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
# Scopes (ABI 6): no signals to, no abstract unix sockets of, processes
# outside the sandbox (the daemon that started it among them).
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
_SCOPE_SIGNAL = 1 << 1


class LandlockError(OSError):
    """The kernel refused to build or apply a ruleset."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is absent or disabled."""
    if platform.system() != "Linux":
        return 0
    libc = _libc()
    version = libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    return max(int(version), 0)


class Ruleset:
    """A Landlock ruleset being built; :meth:`restrict_self` applies it."""

    def __init__(self, version: int) -> None:
        if version < 1:
            raise LandlockError(errno.ENOSYS, "Landlock is not available in this kernel")
        self.version = version
        self.handled = _FS_BY_ABI[max(v for v in _FS_BY_ABI if v <= version)]
        self.read = (READ_FILE | READ_DIR | EXECUTE) & self.handled
        self.write = self.handled & ~self.read
        self.device = IOCTL_DEV & self.handled
        self._libc = _libc()
        # The ABI 6 scopes ride in a bigger attribute; older kernels take
        # only the fields they know.
        attr = _RulesetAttr(handled_access_fs=self.handled, handled_access_net=0, scoped=0)
        size = ctypes.sizeof(ctypes.c_uint64)
        if version >= 6:
            attr.scoped = _SCOPE_SIGNAL | _SCOPE_ABSTRACT_UNIX_SOCKET
            size = ctypes.sizeof(_RulesetAttr)
        fd = self._libc.syscall(
            _SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0)
        )
        if fd < 0:
            err = ctypes.get_errno()
            raise LandlockError(err, f"landlock_create_ruleset: {os.strerror(err)}")
        self._fd = int(fd)

    def allow(self, path: Path, access: int) -> bool:
        """Grant ``access`` beneath ``path``; False when the path does not exist."""
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            if not os.path.isdir(path):
                access &= FILE_RIGHTS
            access &= self.handled
            if not access:
                return True
            attr = _PathBeneathAttr(allowed_access=access, parent_fd=fd)
            rc = self._libc.syscall(
                _SYS_ADD_RULE, self._fd, _RULE_PATH_BENEATH, ctypes.byref(attr), ctypes.c_uint32(0)
            )
            if rc < 0:
                err = ctypes.get_errno()
                raise LandlockError(err, f"landlock_add_rule({path}): {os.strerror(err)}")
            return True
        finally:
            os.close(fd)

    def restrict_self(self) -> None:
        """Apply the ruleset to this thread and everything it execs, for good."""
        if self._libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise LandlockError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")
        rc = self._libc.syscall(_SYS_RESTRICT_SELF, self._fd, ctypes.c_uint32(0))
        if rc < 0:
            err = ctypes.get_errno()
            raise LandlockError(err, f"landlock_restrict_self: {os.strerror(err)}")
        os.close(self._fd)
