"""Experiment tracking through a real POC federation: the server's workflow
process (confined, as every job's) streams to an MLflow store in its run
folder; with ``site_metrics: site`` each site's worker streams to a store in
its job's state folder; a site whose kit forbids it (``local/policy.yml``)
tracks nothing and keeps its metrics out of the server's run. Everything is
read back with MLflow's own client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from observe.tracking_store import copy_job, mlflow_artifacts, mlflow_history, mlflow_runs

from shoal.tensorboard import read_scalars

from .conftest import HELLO_NUMPY

pytest.importorskip("mlflow")
pytestmark = pytest.mark.slow


def _run_job(federation: Any, job: Path) -> str:
    admin = federation.admin()
    job_id = admin.submit_job(job)
    meta = admin.wait_for_job(job_id, timeout=180)
    assert meta.status == "FINISHED:COMPLETED", admin.show_errors(job_id)
    return job_id


def test_server_and_site_trackers_in_a_federation(federation: Any, tmp_path: Path) -> None:
    layout = federation.layout
    # site-2 keeps its metrics in the federation.
    (layout.site_kits["site-2"] / "local" / "policy.yml").write_text("metrics_may_leave: false\n")

    # 1. Site metrics through the server's tracker.
    job = copy_job(
        HELLO_NUMPY,
        tmp_path / "via-server",
        "tracking:\n  mlflow: {tracking_uri: mlflow.db, experiment: poc}\n",
    )
    job_id = _run_job(federation, job)
    run_dir = layout.server_kit / "jobs" / job_id / "run"
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    (run,) = mlflow_runs(uri, "poc")
    assert run.info.status == "FINISHED"
    assert run.data.params["job.id"] == job_id
    assert run.data.params["workflow.num_rounds"] == "5"
    assert [s for s, _ in mlflow_history(uri, run.info.run_id, "server/loss")] == [1, 2, 3, 4, 5]
    assert any(k.startswith("sites/site-1/") for k in run.data.metrics)
    assert not any(k.startswith("sites/site-2/") for k in run.data.metrics)
    assert mlflow_artifacts(uri, run.info.run_id, "model") == ["model/global_final.safetensors"]
    # The run folder's TensorBoard files (not a tracker leaving the server) keep both.
    (events,) = (run_dir / "tensorboard").glob("events.out.tfevents.*")
    tags = {s.tag.split("/")[1] for s in read_scalars(events) if s.tag.startswith("sites/")}
    assert tags == {"site-1", "site-2"}

    # 2. Each site's own tracker, from the site.
    job = copy_job(
        HELLO_NUMPY,
        tmp_path / "at-sites",
        "tracking:\n  site_metrics: site\n  mlflow: {tracking_uri: mlflow.db, experiment: poc}\n",
    )
    job_id = _run_job(federation, job)
    server_uri = f"sqlite:///{layout.server_kit / 'jobs' / job_id / 'run' / 'mlflow.db'}"
    (server_run,) = mlflow_runs(server_uri, "poc")
    assert not any(k.startswith("sites/") for k in server_run.data.metrics)
    site1 = layout.site_kits["site-1"] / "jobs" / job_id / "state" / "mlflow.db"
    (site_run,) = mlflow_runs(f"sqlite:///{site1}", "poc")
    assert site_run.info.run_name == f"hello-numpy-{job_id[:8]}-site-1"
    assert site_run.info.status == "FINISHED"
    (metric,) = list(site_run.data.metrics)[:1]
    assert [s for s, _ in mlflow_history(f"sqlite:///{site1}", site_run.info.run_id, metric)] == [
        1,
        2,
        3,
        4,
        5,
    ]
    assert not (layout.site_kits["site-2"] / "jobs" / job_id / "state" / "mlflow.db").exists()
