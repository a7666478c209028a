"""A job's tracking in `shoal simulate`: params, per-round metrics (global and
per site) and the final model in a real MLflow store (SQLite, in tmp_path)
and a W&B offline run, read back with the trackers' own readers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from shoal.tensorboard import read_scalars
from shoal.testing import run_simulation

from .tracking_store import (
    copy_job,
    mlflow_artifacts,
    mlflow_history,
    mlflow_runs,
    wandb_records,
)

pytest.importorskip("mlflow")
pytest.importorskip("wandb")

HELLO_NUMPY = Path(__file__).resolve().parents[2] / "examples" / "hello-numpy"


def test_simulated_job_streams_to_mlflow_and_wandb(tmp_path: Path) -> None:
    store = tmp_path / "mlflow" / "store.db"
    uri = f"sqlite:///{store}"
    job = copy_job(
        HELLO_NUMPY,
        tmp_path / "job",
        f"tracking:\n"
        f"  mlflow: {{tracking_uri: '{uri}', experiment: sim-exp, tags: {{team: fl}}}}\n"
        f"  wandb: {{project: shoal-test, mode: offline, dir: {tmp_path / 'wb'}}}\n",
    )
    result = run_simulation(job, 2, tmp_path / "work")
    assert result.ok

    (run,) = mlflow_runs(uri, "sim-exp")
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("hello-numpy-")
    assert run.data.tags["team"] == "fl"
    params = run.data.params
    assert params["job.name"] == "hello-numpy"
    assert params["workflow"] == "fedavg"
    assert params["workflow.num_rounds"] == "5"
    assert params["sites"] == "site-1,site-2"
    loss = mlflow_history(uri, run.info.run_id, "server/loss")
    assert [step for step, _ in loss] == [1, 2, 3, 4, 5]
    # The same numbers the run folder holds.
    rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert [v for _, v in loss] == pytest.approx([r["server"]["loss"] for r in rows])
    for site in ("site-1", "site-2"):
        site_keys = [k for k in run.data.metrics if k.startswith(f"sites/{site}/")]
        assert site_keys, run.data.metrics
        assert len(mlflow_history(uri, run.info.run_id, site_keys[0])) == 5
    assert mlflow_artifacts(uri, run.info.run_id, "model") == ["model/global_final.safetensors"]
    # Artifacts beside the database, not in whatever folder the test ran in.
    assert (store.parent / "mlartifacts").is_dir()

    # TensorBoard, one tracker among them, still gets every scalar.
    (events,) = (result.run_dir / "tensorboard").glob("events.out.tfevents.*")
    assert {s.step for s in read_scalars(events) if s.tag == "server/loss"} == {1, 2, 3, 4, 5}

    (run_file,) = (tmp_path / "wb").glob("wandb/offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    history = [
        {
            item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for item in r.history.item
        }
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    assert [h["_step"] for h in history] == [1, 2, 3, 4, 5]
    assert [h["server/loss"] for h in history] == pytest.approx([v for _, v in loss])
    config = next(r.run.config for r in records if r.WhichOneof("record_type") == "run")
    updates = [r.config for r in records if r.WhichOneof("record_type") == "config"]
    keys = {u.key for c in updates for u in c.update} | {u.key for u in config.update}
    assert {"job.name", "workflow.num_rounds", "sites"} <= keys
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert [a.type for a in artifacts] == ["model"]
    assert "global_final.safetensors" in str(artifacts[0].manifest)


def test_a_failing_tracker_never_fails_the_job(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    job = copy_job(
        HELLO_NUMPY,
        tmp_path / "job",
        f"tracking:\n  mlflow: {{tracking_uri: 'sqlite:///{blocker}/store.db'}}\n",
    )
    with caplog.at_level(logging.WARNING):
        result = run_simulation(job, 2, tmp_path / "work")
    assert result.ok, result.error
    assert "tracking: mlflow did not start" in caplog.text
    # TensorBoard went on.
    assert list((result.run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_simulated_sites_track_their_own_metrics(tmp_path: Path) -> None:
    job = copy_job(
        HELLO_NUMPY,
        tmp_path / "job",
        "tracking:\n  site_metrics: site\n  mlflow: {tracking_uri: mlflow.db, experiment: e}\n",
    )
    result = run_simulation(job, 2, tmp_path / "work")
    (server_run,) = mlflow_runs(f"sqlite:///{result.run_dir / 'mlflow.db'}", "e")
    assert "server/loss" in server_run.data.metrics
    assert not any(k.startswith("sites/") for k in server_run.data.metrics)
    for site in ("site-1", "site-2"):
        uri = f"sqlite:///{result.run_dir / 'site_state' / site / 'mlflow.db'}"
        (run,) = mlflow_runs(uri, "e")
        assert run.info.run_name.endswith(f"-{site}") and run.info.status == "FINISHED"
        (metric, *_) = sorted(run.data.metrics)
        assert [s for s, _ in mlflow_history(uri, run.info.run_id, metric)] == [1, 2, 3, 4, 5]
