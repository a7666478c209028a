"""Keep a long-running process's memory from growing with concurrency.

glibc gives each thread that allocates its own arena (up to 8 per core) and
raises its mmap threshold after large blocks are freed, after which 1–8 MiB
transfer chunks come from arenas and are kept, not returned to the system: a
server streaming a model to N sites at once then holds N sets of chunks long
after the transfers end. Fixing the threshold makes large blocks always
mmap'd (returned on free) and capping arenas bounds the rest.

The threshold is fixed at 4 MiB by default, above the 1 MiB transfer chunks:
mapping and faulting in every chunk afresh cost the server ~40% more CPU per
byte sent, and with two arenas the reused chunks stay bounded. Job workers
use the same settings (see ``shoal.client.worker``).

Fixing the mmap threshold also fixes glibc's trim threshold at its 128 KiB
default: a heap whose top had a few freed chunks gave them back to the
system, and the next chunks faulted in afresh. On a VM that hands freed
memory to its host, a fresh page costs a host fault: the bench server took
34,000 page faults a 100 MiB round (0.79 CPU-s), 44 with the trim threshold
at 16 MiB (0.64 CPU-s). At most that much free memory stays per arena.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["tune_allocator"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def tune_allocator(
    *,
    mmap_threshold: int = 4 * 1024 * 1024,
    arena_max: int = 2,
    trim_threshold: int = 16 * 1024 * 1024,
) -> bool:
    """Apply the settings above; False (and nothing done) where libc is not glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = (
        bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
        and bool(mallopt(_M_ARENA_MAX, arena_max))
        and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    )
    if not ok:
        log.debug("mallopt refused the allocator settings")
    return ok
