"""SCAFFOLD's PyTorch helper (``shoal.frameworks.torch.ScaffoldCorrection``)
by hand: the correction reaches the gradients of the trainable floating
parameters only, the weights move as corrected SGD says, c_i+ is saved and
delta c_i returned.

Net: ``lin = Linear(2, 1)``, loss ``lin([[1, 2]]).sum()``: the gradient is
``W: [[1, 2]], b: [1]`` whatever the weights. Round 2, from zeros:
c = ``[[0.5, 0.5]], [0]``, c_i kept = ``[[1, 0]], [2]``, so the correction
c - c_i = ``[[-0.5, 0.5]], [-2]`` and the corrected gradient ``[[0.5, 2.5]],
[-1]``. Two SGD steps of lr 0.5: ``W = [[-0.5, -2.5]], b = [1]``. Option II:
c_i+ = c_i - c + (x - y) / (2 * 0.5) = the plain gradient ``[[1, 2]], [1]``,
and delta c_i = ``[[0, 2]], [-1]``.
"""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from shoal.arrays import load_arrays, save_arrays  # noqa: E402
from shoal.client import FLModel  # noqa: E402
from shoal.client.scaffold import STATE_FILE  # noqa: E402
from shoal.errors import ArrayFormatError  # noqa: E402
from shoal.frameworks.torch import ScaffoldCorrection, get_weights, set_weights  # noqa: E402

nn = torch.nn
F = np.float32


class Net(nn.Module):
    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1, dtype=dtype)
        self.frozen = nn.Parameter(torch.ones(1, dtype=dtype), requires_grad=False)
        self.register_buffer("count", torch.zeros(1, dtype=dtype))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * self.frozen


def _zeros(net: nn.Module) -> dict[str, np.ndarray]:
    """The weights of ``lin`` zero, ``frozen`` one."""
    out = {k: np.zeros_like(v) for k, v in get_weights(net).items()}
    out["frozen"] = np.ones_like(out["frozen"])
    return out


def _train(net: Net, scaffold: ScaffoldCorrection, *, steps: int, lr: float) -> None:
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    x = torch.tensor([[1.0, 2.0]], dtype=net.lin.weight.dtype)
    for _ in range(steps):
        opt.zero_grad()
        net(x).sum().backward()
        scaffold.apply()
        opt.step()


def test_two_steps_by_hand(tmp_path: Path) -> None:
    save_arrays(
        tmp_path / STATE_FILE,
        {"lin.weight": np.array([[1, 0]], F), "lin.bias": np.array([2], F)},
        {"round": "1"},
    )
    net = Net()
    x = _zeros(net)
    set_weights(net, x)
    c = {"c/lin.weight": np.array([[0.5, 0.5]], F), "c/lin.bias": np.zeros(1, F)}
    scaffold = ScaffoldCorrection(net, FLModel(params=x, extras=c, current_round=2), tmp_path)
    # Trainable floating parameters only: not the frozen one, not the buffers.
    assert scaffold.variates.names == ["lin.weight", "lin.bias"]
    assert scaffold.variates.loaded_round == 1
    _train(net, scaffold, steps=2, lr=0.5)
    assert scaffold.steps == 2
    np.testing.assert_array_equal(net.lin.weight.detach().numpy(), [[-0.5, -2.5]])
    np.testing.assert_array_equal(net.lin.bias.detach().numpy(), [1])
    extras = scaffold.result(lr=0.5)
    assert sorted(extras) == ["delta_c/lin.bias", "delta_c/lin.weight"]
    np.testing.assert_array_equal(extras["delta_c/lin.weight"], np.array([[0, 2]], F))
    np.testing.assert_array_equal(extras["delta_c/lin.bias"], np.array([-1], F))
    kept = load_arrays(tmp_path / STATE_FILE)
    np.testing.assert_array_equal(kept["lin.weight"], np.array([[1, 2]], F))
    np.testing.assert_array_equal(kept["lin.bias"], np.array([1], F))

    # The next round, same module: c_i is round 2's, the correction this
    # round's c - c_i = [[0, -1]], [0]; one step of lr 1 from the weights
    # above, gradient [[1, 1]], [1].
    x2 = {k: np.array(v, copy=True) for k, v in get_weights(net).items()}
    c2 = {"c/lin.weight": np.array([[1, 1]], F), "c/lin.bias": np.ones(1, F)}
    scaffold = ScaffoldCorrection(net, FLModel(params=x2, extras=c2, current_round=3), tmp_path)
    assert scaffold.variates.loaded_round == 2
    _train(net, scaffold, steps=1, lr=1.0)
    np.testing.assert_array_equal(net.lin.weight.detach().numpy(), [[-1.5, -3.5]])
    np.testing.assert_array_equal(net.lin.bias.detach().numpy(), [0])
    extras = scaffold.result(lr=1.0, num_steps=1)
    # c_i+ = the plain gradient again: [[1, 2]], [1]; delta c_i = 0.
    np.testing.assert_array_equal(extras["delta_c/lin.weight"], np.zeros((1, 2), F))
    np.testing.assert_array_equal(extras["delta_c/lin.bias"], np.zeros(1, F))


def test_a_fresh_site_has_nothing_to_correct(tmp_path: Path) -> None:
    net = Net()
    x = _zeros(net)
    set_weights(net, x)
    scaffold = ScaffoldCorrection(net, FLModel(params=x, current_round=1), tmp_path)
    assert scaffold.variates.is_zero and scaffold.variates.loaded_round is None
    _train(net, scaffold, steps=3, lr=0.5)
    # Plain SGD: 3 steps of lr 0.5 on [[1, 2]], [1].
    np.testing.assert_array_equal(net.lin.weight.detach().numpy(), [[-1.5, -3]])
    extras = scaffold.result(lr=0.5)  # K: the 3 calls of apply()
    np.testing.assert_array_equal(extras["delta_c/lin.weight"], np.array([[1, 2]], F))
    np.testing.assert_array_equal(extras["delta_c/lin.bias"], np.array([1], F))


def test_bfloat16_parameters(tmp_path: Path) -> None:
    net = Net(torch.bfloat16)
    x = _zeros(net)
    set_weights(net, x)
    bf16 = ml_dtypes.bfloat16
    c = {"c/lin.weight": np.array([[0.5, 0.5]], bf16), "c/lin.bias": np.zeros(1, bf16)}
    scaffold = ScaffoldCorrection(net, FLModel(params=x, extras=c, current_round=1), tmp_path)
    _train(net, scaffold, steps=1, lr=1.0)
    # gradient + c: [[1.5, 2.5]], [1].
    np.testing.assert_array_equal(net.lin.weight.detach().float().numpy(), [[-1.5, -2.5]])
    extras = scaffold.result(lr=1.0)
    assert extras["delta_c/lin.weight"].dtype == bf16
    # c_i+ = 0 - c + (x - y) = [[1, 2]]: delta c_i = [[1, 2]].
    np.testing.assert_array_equal(extras["delta_c/lin.weight"].astype(F), [[1, 2]])


def test_a_task_for_another_model_is_refused(tmp_path: Path) -> None:
    net = Net()
    x = _zeros(net)
    c = {"c/lin.weight": np.zeros((2, 1), F)}
    with pytest.raises(ArrayFormatError, match="control variate 'lin.weight' is float32"):
        ScaffoldCorrection(net, FLModel(params=x, extras=c), tmp_path)
    with pytest.raises(ArrayFormatError, match="expected a torch.nn.Module"):
        ScaffoldCorrection(x, FLModel(params=x), tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_cuda_device(tmp_path: Path) -> None:
    net = Net().cuda()
    x = _zeros(net)
    set_weights(net, x)
    c = {"c/lin.weight": np.array([[0.5, 0.5]], F), "c/lin.bias": np.zeros(1, F)}
    scaffold = ScaffoldCorrection(net, FLModel(params=x, extras=c, current_round=1), tmp_path)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    opt.zero_grad()
    net(torch.tensor([[1.0, 2.0]], device="cuda")).sum().backward()
    scaffold.apply()
    opt.step()
    np.testing.assert_array_equal(net.lin.weight.detach().cpu().numpy(), [[-1.5, -2.5]])
    extras = scaffold.result(lr=1.0)
    np.testing.assert_array_equal(extras["delta_c/lin.weight"], np.array([[1, 2]], F))
