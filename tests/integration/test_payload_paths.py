"""FedAvg through a real federation for each way a model travels: a small one
inside its header frame and inside the message to the workflow, a mid-sized
one in its header frame but through a file to the workflow, a large one in
chunks (header, data frames, trailer) and files. Each site sends back
different weights, so the final model checks the arithmetic end to end."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from shoal import jobstatus
from shoal.arrays import load_arrays
from shoal.server.ipc import IPC_INLINE_MAX
from shoal.transport.frames import INLINE_MAX

from .conftest import Federation

pytestmark = [pytest.mark.slow]

MODEL = """\
import numpy as np

def initial_weights():
    return {{"w": np.zeros({n}, np.float32), "b": np.arange(3, dtype=np.float64)}}
"""

# site-1 adds 1 with 1 example, site-2 adds 3 with 3 examples: the weighted
# mean adds 2.5 per round.
TRAIN = """\
import numpy as np

import shoal.client as fl

fl.init()
k = 1.0 if fl.get_site_name() == "site-1" else 3.0
while fl.is_running():
    task = fl.receive()
    params = {name: np.asarray(v) + k for name, v in task.params.items()}
    fl.send(fl.FLModel(params=params, metrics={"loss": 0.0}, num_examples=int(k)))
"""


def _job(root: Path, floats: int, rounds: int) -> Path:
    job = root / f"paths-{floats}"
    (job / "app").mkdir(parents=True)
    (job / "job.yml").write_text(
        "\n".join(
            [
                f"name: paths-{floats}",
                "min_clients: 2",
                "workflow:",
                "  name: fedavg",
                f"  num_rounds: {rounds}",
                "client:",
                "  script: train.py",
                "server:",
                '  initial_weights: "model:initial_weights"',
                "",
            ]
        )
    )
    (job / "app" / "model.py").write_text(MODEL.format(n=floats))
    (job / "app" / "train.py").write_text(TRAIN)
    return job


@pytest.mark.parametrize(
    "floats",
    [
        1000,  # 4 KB: in the header frame and in the IPC message
        (IPC_INLINE_MAX + INLINE_MAX) // 8,  # in the header frame, a file for the workflow
        3 * INLINE_MAX // 4 + 12345,  # chunked, files
    ],
    ids=["ipc-inline", "frame-inline", "chunked"],
)
def test_fedavg_is_exact_whichever_way_the_model_travels(
    federation: Federation, tmp_path: Path, floats: int
) -> None:
    rounds = 2
    s = federation.admin()
    job_id = s.submit_job(_job(tmp_path, floats, rounds))
    deadline = time.monotonic() + 180
    while not jobstatus.is_finished(status := s.get_job_meta(job_id)["status"]):
        assert time.monotonic() < deadline, f"job still {status}"
        time.sleep(0.2)
    assert status == jobstatus.COMPLETED, s.get_job_meta(job_id).get("error")
    out = s.download_job(job_id, tmp_path / "dl")
    final = load_arrays(out / "run" / "models" / "global_final.safetensors")
    np.testing.assert_array_equal(final["w"], np.full(floats, 2.5 * rounds, np.float32))
    np.testing.assert_array_equal(final["b"], np.arange(3) + 2.5 * rounds)
    assert final["w"].dtype == np.float32 and final["b"].dtype == np.float64
    # Every result was folded in and its file removed: nothing piles up.
    run_dir = Path(federation.layout.server_kit) / "jobs" / job_id / "run"
    assert [p for p in (run_dir / "results").rglob("*") if p.is_file()] == []
