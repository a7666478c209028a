"""What the server and site daemons share about their own process: the exit
code that asks the kit's start loop for a restart, and the host facts an
admin's ``sys_info`` shows.

Neither daemon owns these, so they live below both: a site daemon importing
them from the server daemon would tie the site to the server's modules.
"""

from __future__ import annotations

import os
import platform
from typing import Any

from shoal import __version__

__all__ = ["EXIT_RESTART", "local_sys_info"]

#: Exit code asking the kit's sub_start.sh loop to start the daemon again.
EXIT_RESTART = 75


def local_sys_info() -> dict[str, Any]:
    """This host and process: platform, Python, shoal, CPUs, pid, memory."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "shoal": __version__,
        "cpus": os.cpu_count(),
        "pid": os.getpid(),
    }
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gb"] = round(pages / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return info
