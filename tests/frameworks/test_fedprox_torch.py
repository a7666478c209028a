"""FedProx's proximal term for PyTorch: its value and gradient against
numbers computed by hand, mu from the task, the global weights moved to the
model's device once per round."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from shoal.arrays import load_arrays  # noqa: E402
from shoal.client.model import FLModel  # noqa: E402
from shoal.errors import ArrayFormatError, ConfigError  # noqa: E402
from shoal.frameworks.torch import get_weights, proximal_term  # noqa: E402
from shoal.sim import SimulatorConfig, simulate  # noqa: E402


def _value(t: torch.Tensor) -> float:
    return float(t.detach())


def _linear(w: list[float], b: float) -> torch.nn.Linear:
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([w]))
        model.bias.copy_(torch.tensor([b]))
    return model


def test_value_and_gradient_by_hand() -> None:
    # w = (1, 2), b = 0.5; global w = (0, 1), b = 1.5; mu = 0.5:
    #   term = 0.5 / 2 * ((1-0)**2 + (2-1)**2 + (0.5-1.5)**2) = 0.25 * 3 = 0.75
    #   d/dw = mu * (w - w_global) = (0.5, 0.5); d/db = 0.5 * -1 = -0.5
    model = _linear([1.0, 2.0], 0.5)
    task = FLModel(
        params={"weight": np.array([[0.0, 1.0]], np.float32), "bias": np.array([1.5], np.float32)},
        meta={"fedprox_mu": 0.5},
    )
    term = proximal_term(model, task)
    assert term.shape == () and _value(term) == 0.75
    term.backward()
    np.testing.assert_array_equal(model.weight.grad.numpy(), [[0.5, 0.5]])
    np.testing.assert_array_equal(model.bias.grad.numpy(), [-0.5])
    # The same with the weights and mu apart; mu given wins over the task's.
    assert _value(proximal_term(model, task.params, mu=2.0)) == 3.0
    assert _value(proximal_term(model, task, mu=0.0)) == 0.0


def test_the_global_weights_are_copied_once_a_round() -> None:
    from shoal.frameworks._torch_prox import _ANCHORS

    model = _linear([1.0, 2.0], 0.5)
    task = FLModel(params=get_weights(_linear([0.0, 0.0], 0.0)), meta={"fedprox_mu": 1.0})
    proximal_term(model, task)
    first = [g for _, g in _ANCHORS[model].pairs]
    proximal_term(model, task)  # the next batch: the same tensors
    assert all(a is b for a, b in zip(first, [g for _, g in _ANCHORS[model].pairs], strict=True))
    # (1 + 4 + 0.25) / 2 = 2.625. A new round's task: copied again.
    assert _value(proximal_term(model, task)) == 2.625
    nxt = FLModel(params=get_weights(_linear([1.0, 2.0], 0.5)), meta={"fedprox_mu": 1.0})
    assert _value(proximal_term(model, nxt)) == 0.0
    assert _ANCHORS[model].pairs[0][1] is not first[0]
    # Copies, not views: changing the task's arrays changes nothing.
    nxt.params["weight"][...] = 100
    assert _value(proximal_term(model, nxt)) == 0.0


def test_frozen_parameters_and_buffers_take_no_part() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    model[0].bias.requires_grad_(False)
    glob = {k: np.zeros_like(v) for k, v in get_weights(model).items()}
    del glob["0.bias"]  # a frozen one may be missing
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].weight.fill_(2.0)
        model[1].bias.fill_(0.0)
        model[0].bias.fill_(5.0)
        model[1].running_mean.fill_(7.0)
    # Trainable: 0.weight (4 ones) and 1.weight (2 twos), 1.bias (zeros):
    # (4 * 1 + 2 * 4) * 0.1 / 2 = 0.6
    assert _value(proximal_term(model, glob, mu=0.1)) == pytest.approx(0.6)


def test_a_missing_or_misshapen_weight_and_a_missing_mu_are_named() -> None:
    model = _linear([1.0, 2.0], 0.5)
    with pytest.raises(ArrayFormatError, match="the global weights have no 'bias'"):
        proximal_term(model, {"weight": np.zeros((1, 2))}, mu=1.0)
    with pytest.raises(ArrayFormatError, match=r"'weight' has shape \(2,\) in the global"):
        proximal_term(model, {"weight": np.zeros(2), "bias": np.zeros(1)}, mu=1.0)
    with pytest.raises(ConfigError, match="no 'fedprox_mu'.*pass mu="):
        proximal_term(model, FLModel(params=get_weights(model)))
    with pytest.raises(ConfigError, match="pass mu="):
        proximal_term(model, get_weights(model))
    with pytest.raises(ValueError, match="mu must be a finite number >= 0"):
        proximal_term(model, get_weights(model), mu=-1.0)


def test_a_training_loop_stays_nearer_the_global_model() -> None:
    # Ten steps of SGD towards a target far from the global weights: with a
    # large mu the weights end nearer where the round started.
    def train(mu: float) -> float:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        task = FLModel(params=get_weights(model), meta={"fedprox_mu": mu})
        start = {k: np.array(v) for k, v in task.params.items()}
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x = torch.ones(8, 4)
        for _ in range(10):
            opt.zero_grad()
            loss = ((model(x) - 10.0) ** 2).mean() + proximal_term(model, task)
            loss.backward()
            opt.step()
        end = get_weights(model)
        return float(sum(np.sum((end[k] - start[k]) ** 2) for k in start))

    assert train(10.0) < 0.5 * train(0.0)


def test_bfloat16_global_weights_for_a_bfloat16_model() -> None:
    model = _linear([1.0, 2.0], 0.5).to(torch.bfloat16)
    glob = get_weights(_linear([0.0, 1.0], 1.5).to(torch.bfloat16))
    term = proximal_term(model, glob, mu=0.5)
    assert term.dtype == torch.bfloat16 and _value(term) == 0.75


PROX_TRAIN = """
import torch
import shoal.client as fl
from shoal.frameworks.torch import get_weights, proximal_term, set_weights

fl.init()
net = torch.nn.Linear(3, 2)
opt = torch.optim.SGD(net.parameters(), lr=0.1)
while fl.is_running():
    task = fl.receive()
    set_weights(net, task.params)
    with torch.no_grad():  # as if local training had moved every weight by +1
        for p in net.parameters():
            p.add_(1)
    opt.zero_grad()
    loss = proximal_term(net, task)  # one line; mu from job.yml
    loss.backward()
    opt.step()
    fl.send(fl.FLModel(params=get_weights(net), num_examples=1))
"""

PROX_JOB = """
name: prox
min_clients: 2
workflow: {name: fedprox, num_rounds: 2, mu: 2.0}
client: {script: train.py}
server: {initial_weights: "model:initial"}
"""


def test_fedprox_in_simulate_with_the_one_line_helper(tmp_path: Path) -> None:
    job = tmp_path / "prox"
    (job / "app").mkdir(parents=True)
    (job / "app" / "train.py").write_text(PROX_TRAIN)
    (job / "app" / "model.py").write_text(
        "import numpy as np\n\ndef initial():\n"
        "    return {'weight': np.zeros((2, 3), np.float32), 'bias': np.zeros(2, np.float32)}\n"
    )
    (job / "job.yml").write_text(PROX_JOB)
    result = simulate(SimulatorConfig(job_dir=job, num_sites=2, workdir=tmp_path / "runs"))
    assert result.ok, result.failure_summary()
    # Each round: w_global + 1, then one step on (mu/2)||w - w_global||^2:
    # - 0.1 * mu * 1 = -0.2, so +0.8 a round; two rounds: 1.6.
    final = load_arrays(result.run_dir / "models" / "global_final.safetensors", mmap=False)
    np.testing.assert_allclose(final["weight"], np.full((2, 3), 1.6), rtol=1e-6)
    np.testing.assert_allclose(final["bias"], np.full(2, 1.6), rtol=1e-6)
