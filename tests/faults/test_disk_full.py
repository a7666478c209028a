"""The server's workspace fills up while a job saves models: the job fails
with a clear reason; earlier jobs and models are intact and the server goes on.

The workspace is a small tmpfs the test mounts (root only) and always unmounts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.arrays import load_arrays

from .harness import wait_for, write_job

pytestmark = pytest.mark.slow


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    if shutil.which("mount") is None:
        pytest.skip("needs `mount`")
    mnt = tmp_path / "ws"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_workspace_full_while_saving_models_fails_job_clearly(
    small_tmpfs: Path, fed_factory, tmp_path: Path
):
    fed = fed_factory()
    admin = fed.start_all(workspace=small_tmpfs, heartbeat_s=6)

    ok_id = admin.submit_job(write_job(tmp_path / "small", name="small", num_rounds=2))
    assert admin.wait_for_job(ok_id, timeout=120)["status"] == "FINISHED:COMPLETED"
    ok_files = _hashes(small_tmpfs / "jobs" / ok_id / "run")

    # 2.4 MB models: the initial model and two results take most of the 8 MB;
    # a later round's results or model cannot be written.
    big = write_job(tmp_path / "big", name="big", size=600_000, num_rounds=3, min_clients=2)
    big_id = admin.submit_job(big)
    meta = admin.wait_for_job(big_id, timeout=180)
    assert meta["status"] == "FINISHED:EXECUTION_EXCEPTION", meta
    error = (meta.get("error") or "") + admin.show_errors(big_id).__repr__()
    assert "No space left on device" in error or "disk" in error.lower(), error

    # No half-written model became visible: every global model there is whole,
    # the checkpoint names one of them, and no temporary file is left behind.
    run_dir = fed.run_dir(big_id)
    models = sorted((run_dir / "models").iterdir())
    assert models and all(p.name.startswith("global_round_") for p in models), models
    for p in models:
        load_arrays(p)  # complete: a torn file fails its size check
    checkpoint = json.loads((run_dir / "checkpoint.json").read_text())
    assert (run_dir / checkpoint["model"]) in models
    assert not [p for p in run_dir.rglob("*") if p.name.endswith((".tmp", ".partial"))]
    # The earlier job is untouched and still listed; the server still answers.
    assert _hashes(small_tmpfs / "jobs" / ok_id / "run") == ok_files
    assert admin.get_job_meta(ok_id)["status"] == "FINISHED:COMPLETED"
    assert {j["job_id"] for j in admin.list_jobs()} == {ok_id, big_id}
    wait_for(lambda: admin.check_status()["server"]["status"] == "started", 10, "status")
