"""A workflow built from the round driver with another server update (the
test-only ``my_fedavgm`` of tests/workflows/fedavgm.py) runs through real daemons
from real kits, and a server SIGKILLed mid-job resumes it with its state.

The workflow is not in shoal's registry: a ``sitecustomize`` on the daemons'
PYTHONPATH registers it in every process they start (the server's submit
check, its workflow process), which is how a deployment would add its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faults.harness import wait_for, write_job
from workflows.fedavgm import momentum

from shoal.arrays import load_arrays
from shoal.workflows.store import RoundStore

pytestmark = pytest.mark.slow

FEDAVGM = Path(__file__).resolve().parents[1] / "workflows" / "fedavgm.py"
LR, BETA = 0.5, 0.8


def _plugin(folder: Path) -> Path:
    folder.mkdir()
    shutil.copy(FEDAVGM, folder / "shoal_test_fedavgm.py")
    (folder / "sitecustomize.py").write_text(
        "import shoal_test_fedavgm\n"
        "from shoal.workflows import register\n"
        "register(shoal_test_fedavgm.ENTRY)\n"
    )
    return folder


def _kill_workflow_process(job_id: str) -> None:
    """The workflow process has its own process group; a machine crash takes it too."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"shoal.server.job_process" in cmd and job_id.encode() in cmd:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def _expected_final(job: Path, num_rounds: int, num_sites: int) -> dict[str, np.ndarray]:
    """An uninterrupted run: each round's weighted mean, then the momentum step."""
    ns: dict[str, Any] = {}
    exec(compile((job / "app" / "model.py").read_text(), "model.py", "exec"), ns)  # noqa: S102
    params = ns["initial_weights"]()
    update, state = momentum(LR, BETA), {}
    for k in range(1, num_rounds + 1):
        updates = [ns["local_update"](params, i, k) for i in range(num_sites)]
        weights = [ns["num_examples"](i) for i in range(num_sites)]
        mean = {
            key: (
                sum(u[key].astype(np.float64) * n for u, n in zip(updates, weights, strict=True))
                / sum(weights)
            ).astype(params[key].dtype)
            for key in params
        }
        step = update(params, mean, state)
        params, state = step.params, step.state
    return params


def test_a_workflow_of_its_own_runs_and_resumes_with_its_state(fed_factory, tmp_path: Path):
    plugin = _plugin(tmp_path / "plugin")
    fed = fed_factory()
    fed.env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(plugin), os.environ.get("PYTHONPATH", "")) if p
    )
    fed.env["SHOAL_DATA_PATHS"] = str(plugin)  # job code may read it (shoal.sandbox)
    admin = fed.start_all(heartbeat_s=6)

    rounds = 5
    (fed.gate / "config.json").write_text(json.dumps({"sleep": {"site-1": 0.3, "site-2": 0.3}}))
    job = write_job(tmp_path / "job", num_rounds=rounds, min_clients=2, round_timeout_s=300)
    yml = (job / "job.yml").read_text()
    assert "  name: fedavg\n" in yml
    (job / "job.yml").write_text(
        yml.replace(
            "  name: fedavg\n",
            f"  name: my_fedavgm\n  server_lr: {LR}\n  server_momentum: {BETA}\n",
        )
    )
    job_id = admin.submit_job(job)
    wait_for(lambda: fed.round_done(job_id, 2), 120, "round 2")
    wait_for(lambda: (fed.gate / "site-1.r3.start").exists(), 120, "round 3 to start")

    fed.kill("server1", signal.SIGKILL)
    _kill_workflow_process(job_id)
    checkpoint = json.loads((fed.run_dir(job_id) / "checkpoint.json").read_text())
    done = checkpoint["round"]
    assert 2 <= done < rounds
    assert checkpoint["state"] == f"server_state/round_{done:04d}.safetensors"

    log = fed.restart_and_finish(job_id)
    assert "running workflow my_fedavgm on ['site-1', 'site-2']" in log
    assert f"resuming job {job_id} after round {done}" in log
    assert [m["round"] for m in fed.metrics(job_id)] == list(range(1, rounds + 1))

    # The state came back: its round count goes on from the checkpoint's,
    # and the final model is an uninterrupted run's (momentum and all).
    store = RoundStore(fed.run_dir(job_id))
    ckpt = store.load_checkpoint()
    assert ckpt is not None and ckpt.round == rounds
    assert store.load_state(ckpt)["rounds"] == rounds
    final = load_arrays(fed.run_dir(job_id) / "models" / "global_final.safetensors", mmap=False)
    want = _expected_final(job, rounds, num_sites=2)
    assert final.keys() == want.keys()
    for key in want:
        assert final[key].dtype == want[key].dtype
        np.testing.assert_allclose(final[key], want[key], rtol=1e-5, atol=1e-5)
