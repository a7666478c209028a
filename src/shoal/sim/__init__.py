"""The simulator: a whole federation on one machine, no certificates, no daemons.

    from shoal.sim import SimulatorConfig, simulate

    result = simulate(SimulatorConfig(job_dir=Path("examples/hello-numpy"), num_sites=100))
    assert result.ok, result.failure_summary()
    print(result.final_metrics, result.run_dir)

The same job folder runs here and in a real federation; see
docs/client-api.md for what a script may and may not assume when its sites
run as threads of one process.
"""

from __future__ import annotations

from shoal.sim.comm import RoundStats, SimCommunicator
from shoal.sim.hosts import SITE_HOSTS, HostSetup, SiteHost
from shoal.sim.runner import (
    DEFAULT_WORKDIR,
    PER_SITE_LOGS_MAX,
    SimulationResult,
    SimulatorConfig,
    simulate,
)

__all__ = [
    "DEFAULT_WORKDIR",
    "PER_SITE_LOGS_MAX",
    "SITE_HOSTS",
    "HostSetup",
    "RoundStats",
    "SimCommunicator",
    "SiteHost",
    "SimulationResult",
    "SimulatorConfig",
    "simulate",
]
