"""Site hosts: where a simulation's sites run their script.

The runner owns the job (run folder, workflow, :class:`SimCommunicator`); a
site host owns the sites. It starts every site's script, hands each site the
task messages the communicator routes to it, and reports back through
``setup.emit`` with two kinds of JSON-able message:

* ``{"type": "result", "site", "task_id", "round", "num_examples", "metrics",
  "path" | "arrays"}``: a site's answer, its weights in a file (``path``) or,
  for sites in this process, in memory (``arrays``);
* ``{"type": "exit", "site", "error", "left_early"}``: once per site, when its
  script ended (``error`` is ``None`` or why it failed).

:class:`shoal.sim.site.SiteRuntime` produces exactly these for sites run as
threads, so a new host usually places SiteRuntimes somewhere (threads here,
spawned processes, Ray actors) and carries messages both ways. A host is
chosen by name from :data:`SITE_HOSTS`; adding one is one more entry::

    SITE_HOSTS["ray"] = RayHost      # any callable HostSetup -> SiteHost
    simulate(SimulatorConfig(job_dir=job, mode="ray"))
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from shoal._threads import thread_env
from shoal.errors import ConfigError
from shoal.sim.config import SimulatorConfig
from shoal.sim.site import SiteInfo, SiteRuntime

if TYPE_CHECKING:
    # Imported when first used: the threads mode needs no multiprocessing.
    from shoal.sim.worker import WorkerHost

__all__ = [
    "SITE_HOSTS",
    "HostSetup",
    "ProcessesHost",
    "SiteHost",
    "SiteHostFactory",
    "ThreadsHost",
    "site_host_factory",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostSetup:
    """Everything a site host needs to run one simulation's sites."""

    #: The simulator's options (a host reads its own knobs: threads, processes, ...).
    config: SimulatorConfig
    #: The sites to host, in order.
    sites: tuple[SiteInfo, ...]
    #: The job's client script, inside the run folder's ``app/``.
    script: Path
    #: ``sys.argv`` the script sees: the script and the job's client args.
    argv: tuple[str, ...]
    #: Environment variables the job sets for its script.
    env: Mapping[str, str]
    #: Folders put first on ``sys.path`` (the script's and ``app/``).
    sys_path: tuple[str, ...]
    #: The job's id as sites see it (``fl.system_info()["job_id"]``).
    job_id: str
    #: Where sites write result files: ``results_dir/<task_id>/<site>.safetensors``.
    results_dir: Path
    #: The run's ``logs/``; a host in another process writes its sites' logs there.
    log_dir: Path
    #: Whether each site also gets ``logs/site-N.log``.
    per_site_logs: bool
    #: Takes every message out of a site (see the module docstring); thread-safe.
    emit: Callable[[Mapping[str, Any]], None]
    #: The job's site filters by point (``shoal.filters.specs_to_json`` form).
    filters: Mapping[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: The job's ``app/`` folder, where its filters resolve.
    app_dir: Path | None = None
    #: Where each site's state folder lives (``shoal.client.state_dir()``):
    #: ``state_root/<site>``, on a filesystem the site can write; None: none.
    state_root: Path | None = None
    #: The job's ``tracking:`` (``TrackingSpec.to_dict()``) when each site
    #: tracks its own metrics (``site_metrics: site``); {} otherwise.
    tracking: Mapping[str, Any] = field(default_factory=dict)


class SiteHost(Protocol):
    """The sites of one simulation, wherever they run."""

    def start(self) -> None:
        """Start every site's script; each then waits for its first task."""

    def deliver(self, site: str, message: dict[str, Any] | None) -> None:
        """Queue a task message for ``site``; ``None``: the job is over, end the script."""

    def stop(self, timeout: float) -> list[str]:
        """Wait up to ``timeout`` seconds for the scripts to end, kill what can be
        killed, and return the sites still running. Called once the workflow is
        done (after every site was delivered ``None``), also after a failed start."""


#: Builds a host for one simulation (not yet started).
SiteHostFactory = Callable[[HostSetup], SiteHost]


def _stack_size(config: SimulatorConfig, sites_per_process: int) -> int:
    if config.stack_size_kib is not None:
        return config.stack_size_kib * 1024
    return 0 if sites_per_process <= 64 else 2 * 1024 * 1024


class ThreadsHost:
    """Every site a thread of this process, weights handed over in memory."""

    def __init__(self, setup: HostSetup) -> None:
        config = setup.config
        self._runtime = SiteRuntime(
            script=setup.script,
            sites=setup.sites,
            num_sites=len(setup.sites),
            job_id=setup.job_id,
            results_dir=setup.results_dir,
            emit=setup.emit,
            max_active=config.threads or os.cpu_count() or 1,
            stack_size=_stack_size(config, len(setup.sites)),
            in_memory=True,
            filters=setup.filters,
            app_dir=setup.app_dir,
            state_root=setup.state_root,
            tracking=setup.tracking,
        )

    def start(self) -> None:
        self._runtime.start()

    def deliver(self, site: str, message: dict[str, Any] | None) -> None:
        self._runtime.deliver(site, message)

    def stop(self, timeout: float) -> list[str]:
        # Threads cannot be killed; they are daemons and end with the process.
        return self._runtime.join(timeout)


class ProcessesHost:
    """Sites spread over spawned worker processes (:mod:`shoal.sim.worker`)."""

    def __init__(self, setup: HostSetup) -> None:
        self._setup = setup
        self._workers: list[WorkerHost] = []
        self._by_site: dict[str, WorkerHost] = {}

    def start(self) -> None:
        from shoal.sim.worker import WorkerHost

        setup, config = self._setup, self._setup.config
        sites = list(setup.sites)
        count = max(1, min(len(sites), config.processes or os.cpu_count() or 1))
        for k in range(count):
            share = sites[k::count]
            worker = WorkerHost(
                index=k,
                config={
                    "sites": [[s.name, s.index] for s in share],
                    "num_sites": len(sites),
                    "job_id": setup.job_id,
                    "script": str(setup.script),
                    "argv": list(setup.argv),
                    # Each process its share of the cores, unless the job says.
                    "env": {
                        **thread_env({**os.environ, **setup.env}, workers=count),
                        **setup.env,
                    },
                    "sys_path": list(setup.sys_path),
                    "results_dir": str(setup.results_dir),
                    "log_dir": str(setup.log_dir),
                    "per_site_logs": setup.per_site_logs,
                    "log_level": config.log_level,
                    "max_active": config.active_per_process,
                    "stack_size": _stack_size(config, len(share)),
                    "filters": dict(setup.filters),
                    "app_dir": str(setup.app_dir) if setup.app_dir else None,
                    "state_root": str(setup.state_root) if setup.state_root else None,
                    "tracking": dict(setup.tracking),
                },
                on_message=setup.emit,
            )
            for s in share:
                self._by_site[s.name] = worker
            worker.start()
            # Only started workers can be joined: a failed start stops these.
            self._workers.append(worker)
        logger.info("started %d worker process(es)", count)

    def deliver(self, site: str, message: dict[str, Any] | None) -> None:
        self._by_site[site].deliver(site, message)

    def stop(self, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        stuck: list[str] = []
        for worker in self._workers:
            if not worker.join(max(0.0, deadline - time.monotonic())):
                stuck.extend(worker.sites)
                worker.kill()
        return stuck


#: Site hosts by name (``SimulatorConfig.mode``, ``shoal simulate -t/-p``).
#: The first two keep the order the error message has always named them in.
SITE_HOSTS: dict[str, SiteHostFactory] = {
    "threads": ThreadsHost,
    "processes": ProcessesHost,
}


def site_host_factory(name: str) -> SiteHostFactory:
    """The factory registered as ``name``; ConfigError naming the known ones if none."""
    try:
        return SITE_HOSTS[name]
    except KeyError:
        known = [repr(n) for n in SITE_HOSTS]
        listed = known[0] if len(known) == 1 else f"{', '.join(known[:-1])} or {known[-1]}"
        raise ConfigError(f"mode must be {listed}, got {name!r}") from None
