"""The PyTorch adapter with tensors on a GPU: values come back bit for bit,
to the device (and the memory) they were in. Skipped without CUDA, so not
in .ci/required-tests.txt: CI has no GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

from shoal.arrays import load_arrays, save_arrays  # noqa: E402
from shoal.frameworks.torch import get_weights, set_weights, to_numpy_params  # noqa: E402

from .test_torch_adapter import AllDtypes, Tied, _assert_same_state, _same_bits  # noqa: E402

nn = torch.nn


def test_a_cuda_module_round_trips_bit_for_bit_in_place(tmp_path: Path) -> None:
    source, target = AllDtypes(seed=0).cuda(), AllDtypes(seed=1).cuda()
    params = get_weights(source)
    # One copy to host per tensor: plain numpy arrays, not views of the GPU.
    assert all(isinstance(a, np.ndarray) for a in params.values())
    pointers = {k: v.data_ptr() for k, v in target.state_dict().items()}
    set_weights(target, params)
    _assert_same_state(source, target)
    state = target.state_dict()
    assert all(t.device.type == "cuda" for t in state.values())
    assert {k: v.data_ptr() for k, v in state.items()} == pointers
    # Read-only (memory-mapped) arrays too.
    other = AllDtypes(seed=2).cuda()
    set_weights(other, load_arrays(save_arrays(tmp_path / "m.safetensors", params)))
    _assert_same_state(source, other)


def test_mixed_devices_and_tied_weights_on_cuda() -> None:
    torch.manual_seed(0)
    source, target = Tied().cuda(), Tied().cuda()
    source.mid.cpu()  # one layer stays on the host
    target.mid.cpu()
    params = get_weights(source)
    assert list(params) == ["embed.weight", "mid.weight", "mid.bias"]
    set_weights(target, params)
    assert target.embed.weight.device.type == "cuda" and target.mid.weight.device.type == "cpu"
    assert target.head.weight is target.embed.weight
    for name, tensor in source.state_dict().items():
        assert _same_bits(target.state_dict()[name].cpu(), tensor.cpu()), name


def test_to_numpy_params_of_cuda_tensors() -> None:
    state = {"w": torch.randn(4, 4, device="cuda").to(torch.bfloat16), "n": torch.tensor(3).cuda()}
    out = to_numpy_params(state)
    assert out["w"].dtype.name == "bfloat16" and int(out["n"]) == 3
    assert _same_bits(torch.from_numpy(out["w"].view(np.int16)), state["w"].cpu().view(torch.int16))


def test_the_proximal_term_keeps_the_global_weights_on_the_gpu() -> None:
    from shoal.frameworks._torch_prox import _ANCHORS
    from shoal.frameworks.torch import proximal_term

    model = nn.Linear(2, 1).cuda()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.copy_(torch.tensor([0.5]))
    glob = {"weight": np.array([[0.0, 1.0]], np.float32), "bias": np.array([1.5], np.float32)}
    term = proximal_term(model, glob, mu=0.5)  # 0.25 * (1 + 1 + 1)
    assert term.device.type == "cuda" and float(term.detach()) == 0.75
    assert all(g.device.type == "cuda" for _, g in _ANCHORS[model].pairs)
    term.backward()
    np.testing.assert_array_equal(model.weight.grad.cpu().numpy(), [[0.5, 0.5]])
