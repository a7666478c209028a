"""FedAdam through real daemons from real startup kits (mutual TLS): a
server SIGKILLed mid-job resumes it with its m and v, and the final model is
an uninterrupted run's, computed here from the paper's equations."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faults.harness import wait_for, write_job

from shoal.arrays import load_arrays
from shoal.workflows.fedopt import adaptive
from shoal.workflows.store import RoundStore

from .test_workflow_plugin import _kill_workflow_process

pytestmark = pytest.mark.slow

LR, BETA1, BETA2, TAU = 0.05, 0.9, 0.99, 1e-3


def _expected_final(job: Path, num_rounds: int, num_sites: int) -> dict[str, np.ndarray]:
    """An uninterrupted run: each round's weighted mean, then FedAdam's step."""
    ns: dict[str, Any] = {}
    exec(compile((job / "app" / "model.py").read_text(), "model.py", "exec"), ns)  # noqa: S102
    params = ns["initial_weights"]()
    update, state = adaptive("adam", lr=LR, beta1=BETA1, beta2=BETA2, tau=TAU), {}
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
        step = update({k_: v.copy() for k_, v in params.items()}, mean, state)
        params, state = step.params, step.state
    return params


def test_fedadam_runs_through_daemons_and_resumes_with_its_state(
    fed_factory: Any, tmp_path: Path
) -> None:
    fed = fed_factory()
    admin = fed.start_all(heartbeat_s=6)
    rounds = 5
    (fed.gate / "config.json").write_text(json.dumps({"sleep": {"site-1": 0.3, "site-2": 0.3}}))
    job = write_job(tmp_path / "job", num_rounds=rounds, min_clients=2, round_timeout_s=300)
    yml = (job / "job.yml").read_text()
    assert "  name: fedavg\n" in yml
    (job / "job.yml").write_text(
        yml.replace(
            "  name: fedavg\n",
            f"  name: fedadam\n  server_lr: {LR}\n  beta1: {BETA1}\n  beta2: {BETA2}\n"
            f"  tau: {TAU}\n",
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
    assert "running workflow fedadam on ['site-1', 'site-2']" in log
    assert f"resuming job {job_id} after round {done}" in log
    assert [m["round"] for m in fed.metrics(job_id)] == list(range(1, rounds + 1))

    store = RoundStore(fed.run_dir(job_id))
    ckpt = store.load_checkpoint()
    assert ckpt is not None and ckpt.round == rounds
    state = store.load_state(ckpt)
    # The round count goes on from the checkpoint's: the state came back.
    assert state["rounds"] == rounds
    assert sorted(state) == ["m/b", "m/w", "rounds", "v/b", "v/w"]
    final = load_arrays(fed.run_dir(job_id) / "models" / "global_final.safetensors", mmap=False)
    want = _expected_final(job, rounds, num_sites=2)
    assert final.keys() == want.keys()
    for key in want:
        assert final[key].dtype == want[key].dtype
        np.testing.assert_allclose(final[key], want[key], rtol=1e-5, atol=1e-6)
