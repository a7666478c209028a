"""hello-pt (PyTorch, MNIST, FedAvg, non-IID sites) in a real federation.

POC provisioning -> server + 2 sites from their startup kits (mutual TLS on
127.0.0.1, job code confined as in production) -> the admin submits
``hello-pt`` unchanged from its kit's transfer/ folder -> FINISHED:COMPLETED
-> this test downloads the job, loads ``global_final.pt`` and
``global_final.safetensors`` into the example's network and measures their
accuracy on the MNIST test set itself.

Needs PyTorch and a local MNIST (``SHOAL_MNIST_PATH=/path/to/mnist.npz``);
about a minute on two cores.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shoal import poc

from .conftest import EXAMPLES, MNIST, check_round_logs, require_mnist, run_example

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(900),
    # shoal.poc.start() drops the Popen objects of the daemons it leaves running.
    pytest.mark.filterwarnings(r"ignore:subprocess \d+ is still running:ResourceWarning"),
]

require_mnist()
if importlib.util.find_spec("torch") is None:
    pytest.skip("PyTorch is not installed (pip install -e '.[pt]')", allow_module_level=True)

import torch  # noqa: E402

from shoal.arrays import load_arrays  # noqa: E402
from shoal.frameworks.torch import set_weights  # noqa: E402

#: The global model's accuracy on the MNIST test set after round 5 (the
#: README states 0.973 for the simulator; a POC run trains the same way).
MIN_ACCURACY = 0.96
ROUNDS = 5


def _network() -> Any:
    spec = importlib.util.spec_from_file_location(
        "hello_pt_e2e_model", EXAMPLES / "hello-pt" / "app" / "model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Net()


def _accuracy(net: Any) -> float:
    """The test's own measure: top-1 accuracy on the whole MNIST test set."""
    with np.load(MNIST) as f:
        x = torch.from_numpy(f["x_test"].astype(np.float32) / 255.0)
        y = torch.from_numpy(f["y_test"].astype(np.int64))
    net.eval()
    with torch.no_grad():
        predicted = torch.cat([net(x[i : i + 2000]).argmax(dim=1) for i in range(0, len(x), 2000)])
    return float((predicted == y).double().mean())


def test_hello_pt_end_to_end(federation: poc.PocLayout, tmp_path: Path) -> None:
    done = run_example(federation, "hello-pt", tmp_path / "download")
    check_round_logs(done, ROUNDS, "round {k}/{n} loss=")  # train.py's own line
    # The split is non-IID: the sites hold different numbers of images (36227 and 23773).
    assert "36227 training and 6028 test images" in done.logs["site-1.log"]
    assert "23773 training and 3972 test images" in done.logs["site-2.log"]
    server_accuracy = done.rounds[-1]["server"]["accuracy"]

    # The test's own evaluation of what it downloaded: the native .pt ...
    models = done.out / "run" / "models"
    net = _network()
    net.load_state_dict(torch.load(models / "global_final.pt", weights_only=True))
    from_pt = _accuracy(net)
    # ... and the safetensors the server aggregated, through the adapter.
    fresh = _network()
    set_weights(fresh, load_arrays(models / "global_final.safetensors"))
    from_safetensors = _accuracy(fresh)
    print(f"downloaded model accuracy: .pt {from_pt:.4f}, .safetensors {from_safetensors:.4f}")
    assert from_pt >= MIN_ACCURACY
    assert from_safetensors == from_pt
    assert from_pt == pytest.approx(server_accuracy, abs=1e-3)
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, fresh.state_dict()[name]), name


@pytest.mark.skipif(importlib.util.find_spec("opacus") is None, reason="opacus is not installed")
def test_hello_pt_dp_end_to_end(federation: poc.PocLayout, tmp_path: Path) -> None:
    """DP-SGD (Opacus) at both sites of a real federation: each site's
    epsilon reaches the job's round metrics, and the model still learns."""
    from shoal.privacy.accounting import gaussian_epsilon

    done = run_example(federation, "hello-pt-dp", tmp_path / "download")
    assert [r["round"] for r in done.rounds] == [1, 2, 3]
    q = 1 / -(-30000 // 64)  # Opacus's sample rate: 1 / batches per epoch
    for k, r in enumerate(done.rounds, start=1):
        want = gaussian_epsilon(
            noise_multiplier=1.0, sampling_fraction=q, rounds=60 * k, delta=1e-5
        )
        assert {s: m["dp_sgd_epsilon"] for s, m in r["sites"].items()} == pytest.approx(
            {"site-1": want, "site-2": want}, rel=1e-3
        )
    assert done.rounds[-1]["server"]["accuracy"] > 0.75
