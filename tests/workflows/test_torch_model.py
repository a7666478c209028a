"""FedAvg with a PyTorch model on the server: ``server.model`` may return an
``nn.Module`` (the final model is also saved as ``global_final.pt``), and
``server.initial_weights`` a ``state_dict()`` of tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from shoal.arrays import load_arrays  # noqa: E402
from shoal.jobs import ClientAppSpec, JobSpec, ServerAppSpec, WorkflowSpec  # noqa: E402
from shoal.workflows import WorkflowContext, get_workflow  # noqa: E402

from .fakes import FakeComm, shift  # noqa: E402

MODEL_PY = """\
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(3, 2)
        self.bn = torch.nn.BatchNorm1d(2)
        self.head = torch.nn.Linear(2, 2, bias=False).to(torch.bfloat16)
        self.out = torch.nn.Linear(2, 2, bias=False).to(torch.bfloat16)
        self.out.weight = self.head.weight  # tied


def build_model():
    return Net()


def initial():
    return Net().state_dict()
"""


def _run(tmp_path: Path, *, model: bool) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    (app / "model.py").write_text(MODEL_PY)
    (tmp_path / "results").mkdir()
    spec = JobSpec(
        name="t",
        min_clients=2,
        workflow=WorkflowSpec(name="fedavg", params={}),
        client=ClientAppSpec(script="train.py"),
        server=ServerAppSpec(
            model="model:build_model" if model else None,
            initial_weights=None if model else "model:initial",
        ),
    )
    comm = FakeComm(
        site_fns={"site-1": shift(1.0, 10), "site-2": shift(1.0, 30)},
        results_dir=tmp_path / "results",
    )
    ctx = WorkflowContext(
        job_id="job-1",
        spec=spec,
        params={"num_rounds": 2},
        app_dir=app,
        run_dir=tmp_path / "run",
        comm=comm,
    )
    get_workflow("fedavg")(ctx)
    return tmp_path / "run" / "models"


def test_a_module_as_server_model_gives_a_native_final_model(tmp_path: Path) -> None:
    models = _run(tmp_path, model=True)
    initial = load_arrays(models / "global_round_0000.safetensors")
    # The tied weight travels once; bfloat16 stays bfloat16.
    assert "out.weight" not in initial and initial["head.weight"].dtype.name == "bfloat16"
    assert int(initial["bn.num_batches_tracked"]) == 0
    final = load_arrays(models / "global_final.safetensors")
    native = torch.load(models / "global_final.pt", weights_only=True)
    assert (models / "global_final.pt").stat().st_mode & 0o777 == 0o600  # private, as the rest
    assert set(native) == set(final) | {"out.weight"}
    for name, arr in final.items():
        tensor = native[name]
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.view(torch.int16)
            arr = arr.view(np.int16)
        assert tensor.numpy().tobytes() == arr.tobytes(), name
    assert torch.equal(native["out.weight"], native["head.weight"])
    # Two rounds of +1 on every site: the counter is 2, the weights moved by 2.
    assert int(final["bn.num_batches_tracked"]) == 2
    np.testing.assert_allclose(final["fc.bias"], initial["fc.bias"] + 2, rtol=1e-6)
    assert not any(p.name.startswith(".") for p in models.iterdir())


def test_a_state_dict_of_tensors_as_initial_weights(tmp_path: Path) -> None:
    models = _run(tmp_path, model=False)
    initial = load_arrays(models / "global_round_0000.safetensors")
    assert initial["head.weight"].dtype.name == "bfloat16"
    assert "out.weight" not in initial
    assert not (models / "global_final.pt").exists()
