"""``simulate()``: run a job folder with N simulated sites on this machine.

No certificates, no daemons: the workflow runs in this process against a
:class:`~shoal.sim.comm.SimCommunicator`, and each site runs the job's client
script unchanged, either as a thread of this process (``mode="threads"``,
the default: cheap enough for thousands of sites with a small model) or in a
pool of spawned worker processes (``mode="processes"``: for heavy frameworks).
Each mode is a site host (:mod:`shoal.sim.hosts`) looked up by name in
``SITE_HOSTS``; the runner itself never branches on the mode.

The run folder looks like a real run's::

    WORKDIR/<job>/
      app/                 the job's app folder, as the sites and the server saw it
      models/              written by the workflow (global models, final model)
      metrics.jsonl        written by the workflow
      tensorboard/         written by the workflow
      logs/server.log      the workflow and the simulator
      logs/sites.log       every site's output, one "site-N: " prefix per line
      logs/site-N.log      one file per site, when there are at most 32 sites
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.errors import ConfigError
from shoal.filters import SITE_POINTS, specs_to_json
from shoal.observe.progress import finite_numbers as _numbers
from shoal.sim.comm import RoundStats, SimCommunicator
from shoal.sim.config import DEFAULT_WORKDIR, PER_SITE_LOGS_MAX, SimulatorConfig
from shoal.sim.hosts import HostSetup, SiteHost, SiteHostFactory, site_host_factory
from shoal.sim.logs import SiteLogRouter
from shoal.sim.site import SiteInfo

__all__ = [
    "DEFAULT_WORKDIR",
    "PER_SITE_LOGS_MAX",
    "SimulationResult",
    "SimulatorConfig",
    "simulate",
]

logger = logging.getLogger(__name__)

# Marks a run folder as the simulator's, so a rerun may replace it.
_MARKER = ".shoal-simulation"
# Sites run the script from a shared process: one simulation at a time.
_ONE_AT_A_TIME = threading.Lock()


@dataclass(frozen=True)
class SimulationResult:
    """What a simulation did and where it left its files."""

    #: The job's name (from job.yml).
    job_name: str
    #: Names of the simulated sites.
    sites: tuple[str, ...]
    #: ``workdir/<job>``.
    run_dir: Path
    #: Per finished round: sites asked and answered, time, mean site metrics.
    rounds: tuple[RoundStats, ...]
    #: The last global metrics the server computed (its ``evaluate`` hook), if any.
    final_metrics: Mapping[str, float]
    #: Wall-clock seconds of the whole simulation.
    seconds: float
    #: Why the workflow failed (a traceback), or ``None``.
    error: str | None = None
    #: Site -> why its script failed.
    site_errors: Mapping[str, str] = field(default_factory=dict)
    #: Sites whose script ended before the job did (not an error by itself).
    sites_left_early: tuple[str, ...] = ()
    #: Sites still running when the simulation gave up waiting for them.
    sites_stuck: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the workflow finished and no site's script failed."""
        return self.error is None and not self.site_errors

    @property
    def models_dir(self) -> Path:
        return self.run_dir / "models"

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    def failure_summary(self) -> str:
        """One paragraph saying why the simulation failed ("" when it did not)."""
        parts: list[str] = []
        if self.site_errors:
            site, error = sorted(self.site_errors.items(), key=lambda kv: _site_key(kv[0]))[0]
            parts.append(
                f"{len(self.site_errors)} site(s) failed; {site}: {_last_line(error)} "
                f"(full traceback in {self.log_dir / 'sites.log'})"
            )
        if self.error is not None:
            parts.append(
                f"the workflow failed: {_last_line(self.error)} (see {self.log_dir / 'server.log'})"
            )
        return "; ".join(parts)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else text


def _site_key(name: str) -> tuple[str, int]:
    head, _, tail = name.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (name, 0)


def _site_names(spec: Any, num_sites: int | None) -> list[str]:
    if num_sites is None:
        if spec.sites:
            return list(spec.sites)
        num_sites = spec.min_clients
    if num_sites < 1:
        raise ConfigError(f"the number of sites must be >= 1, got {num_sites}")
    if num_sites < spec.min_clients:
        raise ConfigError(
            f"job {spec.name!r} needs at least {spec.min_clients} sites (min_clients); "
            f"got -n {num_sites}"
        )
    if spec.sites:
        logger.info(
            "job.yml lists sites %s; the simulation uses site-1..site-%d instead",
            ", ".join(spec.sites),
            num_sites,
        )
    return [f"site-{i}" for i in range(1, num_sites + 1)]


def _prepare_run_dir(run_dir: Path) -> None:
    if run_dir.exists():
        if not (run_dir / _MARKER).exists() and any(run_dir.iterdir()):
            raise ConfigError(
                f"{run_dir} exists and was not written by `shoal simulate`; "
                "choose another workdir (-w) or remove it"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / _MARKER).write_text("written by shoal simulate; replaced on the next run\n")


def _job_root(job_dir: Path, run_dir: Path) -> Path:
    from shoal.jobs.spec import find_job_root

    if job_dir.is_dir():
        return find_job_root(job_dir)
    from shoal.jobs.archive import safe_extract

    dest = run_dir / ".sim" / "job"
    safe_extract(job_dir, dest)
    return find_job_root(dest)


def _under(path: str | None, folder: Path) -> bool:
    if not path:
        return False
    try:
        return Path(path).resolve().is_relative_to(folder)
    except (OSError, ValueError):
        return False


def _forget_modules(app_dir: Path, names: Sequence[str] = ()) -> None:
    """Drop modules loaded from ``app_dir`` (and cached modules called ``names``
    loaded from elsewhere), so the next job in this process gets its own."""
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        top = name.split(".")[0]
        if _under(file, app_dir) or (top in names and not _under(file, app_dir)):
            del sys.modules[name]


def _app_module_names(app_dir: Path) -> list[str]:
    names = [p.stem for p in app_dir.glob("*.py")]
    names += [p.parent.name for p in app_dir.glob("*/__init__.py")]
    return names


@contextmanager
def _process_state(*, argv: list[str], env: Mapping[str, str], paths: list[str]) -> Iterator[None]:
    """sys.argv, os.environ and sys.path as a site process would see them."""
    saved_argv = sys.argv
    saved_env = {k: os.environ.get(k) for k in env}
    sys.argv = list(argv)
    os.environ.update(env)
    for path in reversed(paths):
        sys.path.insert(0, path)
    try:
        yield
    finally:
        sys.argv = saved_argv
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        sys.path[:] = [p for p in sys.path if p not in paths]


def _final_metrics(run_dir: Path, comm: SimCommunicator) -> dict[str, float]:
    """The server's last evaluation: from ``metrics.jsonl``, else the last report."""
    found: dict[str, float] = {}
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            metrics = _global_metrics(record)
            if metrics:
                found = metrics
    if not found:
        found = _global_metrics(comm.last_report)
    return found


def _global_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    # The workflow marks server-side evaluation as a "global"/"server" record or key.
    if record.get("source") in ("server", "global") or record.get("kind") in ("global", "eval"):
        return _numbers(record.get("metrics"))
    for key in ("global_metrics", "global", "server", "eval", "evaluation"):
        metrics = _numbers(record.get(key))
        if metrics:
            return metrics
    return {}


def _tracks_at_sites(spec: Any) -> bool:
    """Whether each simulated site opens runs of its own (``site_metrics: site``)."""
    tracking = spec.tracking
    return tracking.site_metrics == "site" and bool(tracking.mlflow or tracking.wandb)


def simulate(
    config: SimulatorConfig,
    *,
    on_round: Callable[[RoundStats], None] | None = None,
) -> SimulationResult:
    """Run ``config.job_dir`` with simulated sites; never raises for a failed job
    (see :attr:`SimulationResult.ok`), only for bad input (ConfigError)."""
    with _ONE_AT_A_TIME:
        return _simulate(config, on_round)


def _simulate(
    config: SimulatorConfig, on_round: Callable[[RoundStats], None] | None
) -> SimulationResult:
    from shoal.jobs.spec import APP_DIR, load_job_spec
    from shoal.workflows.api import WorkflowContext
    from shoal.workflows.registry import get_workflow

    started = time.monotonic()
    job_dir = Path(config.job_dir).resolve()
    spec = load_job_spec(job_dir)
    workflow = get_workflow(spec.workflow.name)
    sites = _site_names(spec, config.num_sites)
    make_host = site_host_factory(config.mode)
    run_dir = Path(config.workdir).resolve() / spec.name
    _prepare_run_dir(run_dir)
    app_dir = run_dir / APP_DIR
    shutil.copytree(
        _job_root(job_dir, run_dir) / APP_DIR,
        app_dir,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    script = app_dir / spec.client.script
    log_dir = run_dir / "logs"
    results_dir = run_dir / ".sim" / "tasks"
    per_site = (
        config.per_site_logs
        if config.per_site_logs is not None
        else len(sites) <= PER_SITE_LOGS_MAX
    )
    paths = list(dict.fromkeys([str(script.parent), str(app_dir)]))
    rounds: list[RoundStats] = []

    def round_done(stats: RoundStats) -> None:
        rounds.append(stats)
        if on_round is not None:
            on_round(stats)

    _forget_modules(app_dir, _app_module_names(app_dir))
    error: str | None = None
    argv = [str(script), *spec.client.args]
    with (
        _process_state(argv=argv, env=dict(spec.client.env), paths=paths),
        SiteLogRouter(
            log_dir,
            sites,
            per_site_logs=per_site,
            server_log=log_dir / "server.log",
            level=config.log_level,
        ),
    ):
        host = _HostSlot()
        comm = SimCommunicator(
            sites,
            route=host.deliver,
            tasks_dir=results_dir,
            on_round=round_done,
        )
        setup = HostSetup(
            config=config,
            sites=tuple(SiteInfo(name=name, index=i) for i, name in enumerate(sites)),
            script=script,
            argv=tuple(argv),
            env=dict(spec.client.env),
            sys_path=tuple(paths),
            job_id=spec.name,
            results_dir=results_dir,
            log_dir=log_dir,
            per_site_logs=per_site,
            emit=comm.on_message,
            filters={
                point: specs_to_json(spec.filters[point])
                for point in SITE_POINTS
                if spec.filters.get(point)
            },
            app_dir=app_dir,
            state_root=run_dir / "site_state",
            tracking=spec.tracking.to_dict() if _tracks_at_sites(spec) else {},
        )
        logger.info(
            "simulating job %s with %d site(s) in %s mode; results in %s",
            spec.name,
            len(sites),
            config.mode,
            run_dir,
        )
        try:
            host.start(make_host, setup)
            ctx = WorkflowContext(
                job_id=spec.name,
                spec=spec,
                params=spec.workflow.params,
                app_dir=app_dir,
                run_dir=run_dir,
                comm=comm,
                logger=logging.getLogger("shoal.workflow"),
            )
            workflow(ctx)
        except Exception as exc:
            error = "".join(traceback.format_exception(exc)).rstrip()
            logger.error("the workflow failed:\n%s", error)
        except BaseException:
            # Ctrl-C: tell the sites, give them a moment, do not wait for training.
            comm.finish()
            host.stop(2.0)
            raise
        finally:
            comm.finish()
        stuck = host.stop(config.join_timeout_s)
        final = _final_metrics(run_dir, comm)
        result = SimulationResult(
            job_name=spec.name,
            sites=tuple(sites),
            run_dir=run_dir,
            rounds=tuple(rounds),
            final_metrics=final,
            seconds=time.monotonic() - started,
            error=error,
            site_errors=dict(comm.errors),
            sites_left_early=tuple(comm.left_early),
            sites_stuck=tuple(stuck),
        )
        logger.info(
            "simulation of %s %s in %.1fs",
            spec.name,
            "done" if result.ok else "FAILED",
            result.seconds,
        )
    _forget_modules(app_dir)
    shutil.rmtree(run_dir / ".sim", ignore_errors=True)
    return result


class _HostSlot:
    """The site host, once built. The communicator routes to the host and the
    host emits to the communicator, so the communicator comes first; the host
    is built inside the workflow's try (where a script that does not compile
    is reported), and until then no site runs and there is nothing to route."""

    def __init__(self) -> None:
        self._host: SiteHost | None = None

    def start(self, make: SiteHostFactory, setup: HostSetup) -> None:
        self._host = make(setup)
        self._host.start()

    def deliver(self, site: str, message: dict[str, Any] | None) -> None:
        if self._host is not None:
            self._host.deliver(site, message)

    def stop(self, timeout: float) -> list[str]:
        stuck = self._host.stop(timeout) if self._host is not None else []
        if stuck:
            logger.warning(
                "%d site(s) still running %.0fs after the job ended: %s",
                len(stuck),
                timeout,
                ", ".join(stuck[:10]),
            )
        return stuck
