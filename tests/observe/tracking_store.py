"""Reading back what a job tracked, with the trackers' own readers: MLflow's
client API, and W&B's record protobuf over its offline run file (a LevelDB-
style log: 7-byte file header, 32 KiB blocks, records split into chunks)."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path
from typing import Any

from shoal.errors import ShoalError

_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def copy_job(src: Path, dest: Path, tracking: str) -> Path:
    """``src`` copied to ``dest`` with ``tracking`` (YAML) appended to its job.yml."""
    shutil.copytree(src, dest)
    job_yml = dest / "job.yml"
    job_yml.write_text(job_yml.read_text() + "\n" + tracking)
    return dest


def mlflow_runs(uri: str, experiment: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} in {uri}"
    return list(client.search_runs([found.experiment_id]))


def mlflow_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def mlflow_artifacts(uri: str, run_id: str, path: str) -> list[str]:
    from mlflow.tracking import MlflowClient

    return [f.path for f in MlflowClient(tracking_uri=uri).list_artifacts(run_id, path)]


def wandb_records(run_file: Path) -> list[Any]:
    """Every record of a W&B offline run file, parsed with wandb's own protobuf."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise ShoalError(f"{run_file}: not a W&B run file")
    pos, partial, out = 7, b"", []
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # a block's tail too small for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == _FULL:
            out.append(chunk)
        elif kind == _FIRST:
            partial = chunk
        elif kind == _MIDDLE:
            partial += chunk
        elif kind == _LAST:
            out.append(partial + chunk)
    records = []
    for raw in out:
        record = pb.Record()
        record.ParseFromString(raw)
        records.append(record)
    return records
