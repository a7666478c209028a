"""The simulator's options: one frozen dataclass, shared by the runner and the site hosts.

Its own module so that :mod:`shoal.sim.hosts` can read the options without
importing the runner that imports it.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_WORKDIR", "PER_SITE_LOGS_MAX", "SimulatorConfig"]

#: Where results go unless told otherwise (like NVFlare's /tmp/nvflare/simulation).
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "shoal" / "simulate"
#: Up to this many sites, each also gets its own ``logs/site-N.log``.
PER_SITE_LOGS_MAX = 32


@dataclass(frozen=True)
class SimulatorConfig:
    """How to simulate a job."""

    #: The job folder (with job.yml and app/) or a zip of one.
    job_dir: Path
    #: Number of simulated sites, named ``site-1`` .. ``site-N``. ``None``: the
    #: job's ``sites`` list if it has one (those names), else ``min_clients``.
    num_sites: int | None = None
    #: Results go to ``workdir/<job name>/`` (replaced if a previous simulation left it).
    workdir: Path = DEFAULT_WORKDIR
    #: Which site host runs the sites, a name in :data:`shoal.sim.hosts.SITE_HOSTS`.
    #: ``"threads"``: every site is a thread of this process. ``"processes"``:
    #: sites are spread over worker processes (spawned).
    mode: str = "threads"
    #: Threads mode: how many sites may work (start up or train) at once;
    #: ``None``: the number of CPUs.
    threads: int | None = None
    #: Processes mode: how many worker processes; ``None``: ``min(N, CPUs)``.
    processes: int | None = None
    #: Processes mode: how many of a worker's sites may work at once.
    active_per_process: int = 1
    #: Write ``logs/site-N.log`` per site; ``None``: when N <= PER_SITE_LOGS_MAX.
    per_site_logs: bool | None = None
    #: Stack size of site threads in KiB; ``None``: the system default for up
    #: to 64 sites per process, 2 MiB beyond (thousands of idle threads).
    stack_size_kib: int | None = None
    #: Seconds to wait for the sites' scripts to end once the workflow is done.
    join_timeout_s: float = 60.0
    #: Level of the records written to the log files.
    log_level: int = logging.INFO
