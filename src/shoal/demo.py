"""The reference scenario end to end, on this machine: what `make demo` runs.

1. provision a project (server1, site-1, site-2, admin@nvidia.com) with real
   certificates;
2. start the server and both sites as separate processes over mutual TLS;
3. as the admin, check status, submit ``examples/hello-tf2``, follow it live
   (also in a browser: the admin's dashboard, whose address it prints);
4. print the final job table and the global model's accuracy, download the
   results, stop every process, and say where everything is.

Ctrl-C at any moment stops everything it started.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from shoal import jobstatus, poc
from shoal.admin.format import format_jobs, format_status
from shoal.errors import ConfigError, ShoalError

if TYPE_CHECKING:
    from shoal.admin.results import JobStats
    from shoal.admin.session import AdminSession

__all__ = ["DemoResult", "run_demo"]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-tf2"


@dataclass(frozen=True)
class DemoResult:
    job_id: str
    status: str
    accuracy: float | None
    workspace: Path
    download: Path | None


def _bar(done: float, total: float, width: int = 24) -> str:
    frac = 0.0 if total <= 0 else min(max(done / total, 0.0), 1.0)
    filled = int(round(frac * width))
    return "[" + "#" * filled + "-" * (width - filled) + f"] {frac * 100:3.0f}%"


def _find_example(job: Path | None) -> Path:
    if job is not None:
        return job
    if EXAMPLE.is_dir():
        return EXAMPLE
    raise ShoalError(
        "examples/hello-tf2 not found next to the shoal sources; pass --job PATH to the job folder"
    )


def run_demo(
    workspace: Path,
    *,
    job: Path | None = None,
    out: TextIO = sys.stdout,
    timeout: float = 1800.0,
    dashboard_port: int | None = None,
) -> DemoResult:
    """The reference scenario; ``dashboard_port``: where the admin's dashboard
    listens (default ``$SHOAL_DASHBOARD_PORT`` or 8765, any free port if taken;
    negative: no dashboard)."""
    job_dir = _find_example(job)
    workspace = workspace.resolve()
    say: Callable[[str], None] = lambda line: print(line, file=out, flush=True)  # noqa: E731
    if (workspace / poc.STATE_FILE).exists():
        poc.stop(workspace)
    if workspace.exists():
        shutil.rmtree(workspace)
    t_start = time.monotonic()
    say("== 1/4 provision: project.yml -> root CA, certificates and startup kits")
    layout = poc.prepare(workspace, num_sites=2)
    for name, kit in [
        ("server1", layout.server_kit),
        *layout.site_kits.items(),
        ("admin", layout.admin_kit),
    ]:
        say(f"   {name:<10} {kit}")
    try:
        say("== 2/4 start: server1, site-1, site-2 as separate processes (mutual TLS on 127.0.0.1)")
        t0 = time.monotonic()
        poc.start(workspace, timeout=120)
        say(f"   all sites connected in {time.monotonic() - t0:.1f} s")
        with contextlib.ExitStack() as stack, poc.admin_session(workspace) as admin:
            stack.callback(_start_dashboard(layout, say, dashboard_port))
            say(f"   admin {admin.user} logged into server1 at {admin.server_address}")
            say(format_status(admin.check_status()))
            say(f"== 3/4 submit_job {job_dir.name} and follow it")
            job_id = admin.submit_job(job_dir)
            say(f"   Submitted job: {job_id}")
            status = _follow(admin, job_id, say, timeout)
            say("== 4/4 results")
            say(format_jobs(admin.list_jobs()))
            download = admin.download_job(job_id, workspace / "downloads")
            accuracy = _final_accuracy(download)
            if status != jobstatus.COMPLETED:
                errors = admin.show_errors(job_id).to_dict()
                say(f"   job ended {status}: {json.dumps(errors, indent=2)[:2000]}")
    finally:
        stopped = poc.stop(workspace)
        say(f"   stopped {', '.join(stopped) or 'nothing'}")
    model = download / "run" / "models"
    if accuracy is not None:
        say(f"   global model test accuracy after the last round: {accuracy:.4f}")
    say(f"   workspace: {workspace}")
    say(f"   models:    {model} (global_final.keras, .safetensors, last rounds' global_round_NNNN)")
    say(f"   logs:      {download / 'logs'} (server.log, site-1.log, site-2.log);")
    say(f"              daemon logs in {layout.run_dir / 'logs'}")
    say(
        f"   metrics:   {download / 'run' / 'metrics.jsonl'}, TensorBoard: {download / 'run' / 'tensorboard'}"
    )
    say(f"   total {time.monotonic() - t_start:.1f} s")
    return DemoResult(job_id, status, accuracy, workspace, download)


def _start_dashboard(
    layout: poc.PocLayout, say: Callable[[str], None], port: int | None
) -> Callable[[], None]:
    """Start the admin's dashboard in a thread, say its address; returns what stops it."""
    if port is None:
        port = int(os.environ.get("SHOAL_DASHBOARD_PORT") or 8765)
    if port < 0:
        return lambda: None
    try:
        from shoal.web import DashboardConfig, start_dashboard
    except ModuleNotFoundError as exc:
        from shoal.cli.dashboard import MISSING_EXTRA

        say(f"   (no live dashboard: {MISSING_EXTRA}; {exc.name} is missing)")
        return lambda: None
    config = DashboardConfig(kit=layout.admin_kit, port=port, server_address=layout.admin_address)
    try:
        dashboard = start_dashboard(config)
    except ConfigError:  # the port is taken: any free one will do
        dashboard = start_dashboard(dataclasses.replace(config, port=0))
    say(f"   watch it live in a browser: {dashboard.url}")
    say("   (the admin's dashboard: sites, jobs, round metrics; it stops with the demo)")
    return dashboard.close


def _follow(admin: AdminSession, job_id: str, say: Callable[[str], None], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        stats = admin.show_stats(job_id)
        line = _progress_line(stats)
        if line != last:
            say(line)
            last = line
        if jobstatus.is_finished(stats.status):
            return stats.status
        if time.monotonic() > deadline:
            raise ShoalError(f"job {job_id} did not finish within {timeout:.0f} s")
        time.sleep(0.5)


def _progress_line(stats: JobStats) -> str:
    """``RUNNING  round 2 of 5 [#####---] 40%  accuracy 0.9282  site-1: ...``"""
    total = stats.num_rounds or 0
    current = stats.current_round or 0
    site_text = ", ".join(f"{name}: {s.state}" for name, s in sorted(stats.sites.items()))
    acc = ""
    if stats.metrics:
        server = stats.metrics[-1].get("server") or {}
        if "accuracy" in server:
            acc = f"  accuracy {server['accuracy']:.4f}"
    bar = _bar(len(stats.metrics), total)
    return f"   {stats.status:<20} round {current} of {total} {bar}{acc}  {site_text}"


def _final_accuracy(download: Path) -> float | None:
    metrics = download / "run" / "metrics.jsonl"
    if not metrics.exists():
        return None
    lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    if not lines:
        return None
    server = lines[-1].get("server") or {}
    value = server.get("accuracy")
    return float(value) if value is not None else None


def default_workspace() -> Path:
    return Path(os.environ.get("SHOAL_DEMO_WORKSPACE", "workspace/demo"))
