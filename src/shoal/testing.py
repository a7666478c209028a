"""Helpers for testing your own jobs (and shoal's): run a job in-process.

    from shoal.testing import run_simulation

    def test_my_job_learns(tmp_path):
        result = run_simulation("jobs/my-job", num_sites=3, workdir=tmp_path)
        assert result.final_metrics["accuracy"] > 0.9
        assert (result.models_dir / "global_final.safetensors").exists()

``run_simulation`` raises :class:`shoal.errors.JobFailedError` with the first
failing site's (or the workflow's) error when the job fails, so a test shows
why without digging through logs; pass ``check=False`` to get the result anyway.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from shoal.errors import JobFailedError
from shoal.sim import SimulationResult, SimulatorConfig, simulate

__all__ = ["SimulationResult", "run_simulation"]


def run_simulation(
    job_dir: str | os.PathLike[str],
    num_sites: int | None = None,
    workdir: str | os.PathLike[str] | None = None,
    *,
    mode: Literal["threads", "processes"] = "threads",
    threads: int | None = None,
    processes: int | None = None,
    check: bool = True,
) -> SimulationResult:
    """Simulate ``job_dir`` with ``num_sites`` sites; results under ``workdir/<job>``.

    ``workdir`` defaults to a fresh temporary folder (kept, so a failing test
    can be inspected). Raises JobFailedError when the job failed and ``check``.
    """
    if workdir is None:
        import tempfile

        workdir = tempfile.mkdtemp(prefix="shoal-test-")
    result = simulate(
        SimulatorConfig(
            job_dir=Path(job_dir),
            num_sites=num_sites,
            workdir=Path(workdir),
            mode=mode,
            threads=threads,
            processes=processes,
        )
    )
    if check and not result.ok:
        error = result.site_errors.get(min(result.site_errors, default=""), "") or result.error
        raise JobFailedError(
            f"simulation of {result.job_name} failed: {result.failure_summary()}"
            + (f"\n{error}" if error else "")
        )
    return result
