"""A script may put PyTorch tensors straight into ``FLModel.params`` (as
NVIDIA FLARE's Client API accepts them): they travel bit for bit, bfloat16
included, with no silent cast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shoal.arrays import load_arrays
from shoal.sim import SimulatorConfig, simulate

torch = pytest.importorskip("torch")

TRAIN = """
import torch
import shoal.client as fl
from shoal.frameworks.torch import set_weights

fl.init()
net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)).to(torch.bfloat16)
while fl.is_running():
    task = fl.receive()
    set_weights(net, task.params)
    with torch.no_grad():
        net[0].weight.add_(1)
    fl.send(fl.FLModel(params=net.state_dict(), num_examples=1))
"""

MODEL = """
import torch


def build_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)).to(torch.bfloat16)
"""

JOB = """
name: tensors
min_clients: 2
workflow: {name: fedavg, num_rounds: 2}
client: {script: train.py}
server: {model: "model:build_model"}
"""


def test_a_state_dict_of_tensors_is_sent_as_is(tmp_path: Path) -> None:
    job = tmp_path / "tensors"
    (job / "app").mkdir(parents=True)
    (job / "app" / "train.py").write_text(TRAIN)
    (job / "app" / "model.py").write_text(MODEL)
    (job / "job.yml").write_text(JOB)
    result = simulate(SimulatorConfig(job_dir=job, num_sites=2, workdir=tmp_path / "runs"))
    assert result.ok, result.failure_summary()
    final = load_arrays(result.run_dir / "models" / "global_final.safetensors", mmap=False)
    torch.manual_seed(0)
    w0 = torch.nn.Linear(3, 2).to(torch.bfloat16).weight.detach()
    want = (w0 + 1) + 1  # each round: every site adds 1 in bfloat16; the mean of equals
    got = torch.from_numpy(final["0.weight"].view(np.int16)).view(torch.bfloat16)
    assert torch.equal(got, want)
    assert str(final["0.weight"].dtype) == "bfloat16"
    assert final["1.num_batches_tracked"].dtype == np.int64
    assert (result.run_dir / "models" / "global_final.pt").is_file()
