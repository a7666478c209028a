"""A site sends hostile numbers through real daemons: 10**15 examples and a
loss of 1e308. Its result is refused past the job's ``max_num_examples``, its
metric is dropped when the result is taken, and the job ends
FINISHED:COMPLETED with site-2's healthy numbers (it used to end
FINISHED:EXECUTION_EXCEPTION: the weighted loss was inf, and metrics.jsonl
refuses inf)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from faults.harness import Fed  # noqa: I001

from shoal.arrays import load_arrays

pytestmark = pytest.mark.slow

MODEL_PY = """
import numpy as np

def initial_weights():
    return {"w": np.zeros(4, dtype=np.float32)}
"""

# site-1 (the hostile one) adds 100 to the model, site-2 adds 1. site-1 claims
# 10**15 examples in round 1 and exactly the job's bound (30) in round 2.
TRAIN_PY = """
import numpy as np

import shoal.client as fl


def main():
    fl.init()
    site = fl.system_info()["site_name"]
    while fl.is_running():
        task = fl.receive()
        if task is None:
            break
        w = np.asarray(task.params["w"], dtype=np.float32)
        if site == "site-1":
            n = 10**15 if task.current_round == 1 else 30
            fl.send(fl.FLModel(params={"w": w + np.float32(100)}, num_examples=n,
                               metrics={"loss": 1e308, "acc": 0.25}))
        else:
            fl.send(fl.FLModel(params={"w": w + np.float32(1)}, num_examples=10,
                               metrics={"loss": 0.5, "acc": 0.75}))


if __name__ == "__main__":
    main()
"""

JOB_YML = """\
name: hostile-numbers
min_clients: 1
workflow:
  name: fedavg
  num_rounds: 2
  round_timeout_s: 120
  max_num_examples: 30
client:
  script: train.py
server:
  initial_weights: "model:initial_weights"
"""


def test_one_sites_numbers_neither_crash_nor_own_the_job(fed_factory, tmp_path: Path):
    fed: Fed = fed_factory()
    admin = fed.start_all()
    job = tmp_path / "job"
    (job / "app").mkdir(parents=True)
    (job / "app" / "model.py").write_text(MODEL_PY)
    (job / "app" / "train.py").write_text(TRAIN_PY)
    (job / "job.yml").write_text(JOB_YML)

    job_id = admin.submit_job(job)
    meta = admin.wait_for_job(job_id, timeout=240)
    assert meta["status"] == "FINISHED:COMPLETED", (meta, fed.tail("server1", 60))

    rounds = {m["round"]: m for m in fed.metrics(job_id)}
    assert sorted(rounds) == [1, 2]
    # Round 1: site-1's 10**15 is over the bound (30): refused, site-2 alone.
    assert rounds[1]["missing"] == ["site-1"]
    assert rounds[1]["sites"] == {"site-2": {"loss": 0.5, "acc": 0.75}}
    assert rounds[1]["aggregated"] == {"loss": 0.5, "acc": 0.75}
    assert rounds[1]["num_examples"] == 10
    # Round 2: site-1 at the bound is taken; its loss of 1e308 is dropped.
    # acc: 0.25 * 30/40 + 0.75 * 10/40 = 0.375; loss: site-2's alone.
    assert rounds[2]["missing"] == []
    assert rounds[2]["sites"] == {"site-1": {"acc": 0.25}, "site-2": {"loss": 0.5, "acc": 0.75}}
    assert rounds[2]["aggregated"] == {"loss": 0.5, "acc": 0.375}
    assert rounds[2]["num_examples"] == 40

    # Round 1: 0 + 1 = 1. Round 2: 1 + (100 * 30 + 1 * 10) / 40 = 1 + 75.25 = 76.25.
    final = load_arrays(fed.run_dir(job_id) / "models" / "global_final.safetensors")
    np.testing.assert_array_equal(final["w"], np.full(4, 76.25, np.float32))

    log = (fed.workspace / "jobs" / job_id / "logs" / "server.log").read_text(errors="replace")
    assert "num_examples is 1000000000000000, over the job's workflow.max_num_examples=30" in log
    assert "dropped metric 'loss' of site-1" in log
