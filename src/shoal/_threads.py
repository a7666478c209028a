"""How many threads a job's frameworks may use, so workers sharing a machine
do not oversubscribe it.

PyTorch, TensorFlow and the BLAS/OpenMP libraries under numpy each start a
thread per core by default. Three torch workers on a 2-core site took
1.4-5 s a round against 0.12-0.19 s with one intra-op thread each (issue
18): every worker's threads fought for the same cores. A site therefore
gives each job worker ``cores // concurrent workers`` threads (at least 1)
through the variables these libraries read at start, unless the operator's
environment or the job's ``client.env`` already sets them::

    env.update(thread_env(env, workers=2))    # {"OMP_NUM_THREADS": "1", ...}
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["THREAD_VARIABLES", "available_cores", "thread_env"]

#: Read at start by OpenMP (PyTorch's intra-op pool included), MKL,
#: OpenBLAS, numexpr, Accelerate and TensorFlow.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
)
#: TensorFlow's pool of independent ops: small, it mostly waits.
_INTEROP = "TF_NUM_INTEROP_THREADS"


def available_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may use: its CPU affinity, lowered by a cgroup v2
    CPU quota (a container's ``cpu: 2`` limit) when there is one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def thread_env(env: Mapping[str, str], *, workers: int, cores: int | None = None) -> dict[str, str]:
    """The thread variables to add to ``env`` for one of ``workers``
    concurrent job workers; variables ``env`` already sets are left alone."""
    per_worker = max(1, (cores or available_cores()) // max(1, workers))
    out = {name: str(per_worker) for name in THREAD_VARIABLES if name not in env}
    if _INTEROP not in env:
        out[_INTEROP] = str(min(2, per_worker))
    return out
