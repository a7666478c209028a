"""hello-pt: its non-IID Dirichlet split, its model, and (slow) a real simulated run."""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

JOB = Path(__file__).resolve().parents[2] / "examples" / "hello-pt"
MNIST = os.environ.get("SHOAL_MNIST_PATH")
needs_mnist = pytest.mark.skipif(
    not MNIST, reason="SHOAL_MNIST_PATH is not set (the Makefile points it at a local mnist.npz)"
)
needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None,
    reason="PyTorch is not installed (pip install -e '.[pt]')",
)

#: What the README states for `shoal simulate examples/hello-pt -n 2`: 0.973
#: after round 5 (the run is deterministic on one machine; the margin is for
#: other CPUs' float arithmetic).
MIN_ACCURACY = 0.96


def _load(name: str) -> ModuleType:
    # A private module name: the app's plain "data" and "model" must not shadow anything.
    spec = importlib.util.spec_from_file_location(f"hello_pt_{name}", JOB / "app" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _labels(per_class: int = 600) -> np.ndarray:
    # An MNIST-sized label vector in a scrambled order, without reading MNIST.
    labels = np.repeat(np.arange(10), per_class)
    return np.random.default_rng(123).permutation(labels)


def _skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each part's label mix and the whole's."""
    whole = np.bincount(labels, minlength=10) / len(labels)
    mixes = [np.bincount(labels[p], minlength=10) / len(p) for p in parts]
    return float(np.mean([0.5 * np.abs(mix - whole).sum() for mix in mixes]))


def _main_body(script: str) -> list[str]:
    lines = (JOB / "app" / script).read_text().splitlines()
    return lines[lines.index("def main() -> None:") :]


def test_readme_shows_the_real_difference_from_the_plain_script() -> None:
    """The README's diff block is the diff of ``main()`` in train_plain.py and
    train.py, and it stays a handful of lines."""
    diff = list(
        difflib.unified_diff(_main_body("train_plain.py"), _main_body("train.py"), n=1, lineterm="")
    )[2:]  # without the ---/+++ file names
    readme = (JOB / "README.md").read_text()
    block = readme.split("```diff\n", 1)[1].split("```", 1)[0].splitlines()
    # Compared without trailing blanks: a blank context line is " " in a diff.
    diff = "\n".join(line.rstrip() for line in diff).strip("\n").splitlines()
    hint = "regenerate the README's diff block:\n" + "\n".join(diff)
    assert [line.rstrip() for line in block] == diff, hint
    changed = [line for line in diff if line[:1] in "+-"]
    assert len(changed) <= 20, changed


def test_job_spec_is_valid_and_does_not_pin_sites() -> None:
    from shoal.jobs.spec import load_job_spec

    spec = load_job_spec(JOB)
    assert spec.name == "hello-pt" and spec.min_clients == 2 and spec.sites is None
    assert spec.workflow.name == "fedavg" and spec.workflow.params["num_rounds"] == 5
    assert spec.server.model == "model:build_model"
    assert spec.server.evaluate == "evaluate:evaluate"
    args = spec.client.args
    assert args[args.index("--alpha") + 1] == "0.5"


@pytest.mark.parametrize("num_sites", [2, 3, 8])
def test_dirichlet_split_is_disjoint_and_covers_the_data(num_sites: int) -> None:
    data = _load("data")
    labels = _labels()
    parts = data.dirichlet_split(labels, num_sites, alpha=0.5, seed=7)
    assert len(parts) == num_sites
    joined = np.concatenate(parts)
    assert len(joined) == len(labels) and len(np.unique(joined)) == len(labels)
    assert all(len(p) >= 10 and np.all(np.diff(p) > 0) for p in parts)


def test_dirichlet_split_is_reproducible_with_its_seed() -> None:
    data = _load("data")
    labels = _labels()
    first = data.dirichlet_split(labels, 3, alpha=0.5, seed=1)
    again = data.dirichlet_split(labels, 3, alpha=0.5, seed=1)
    other = data.dirichlet_split(labels, 3, alpha=0.5, seed=2)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(len(a) != len(b) or np.any(a != b) for a, b in zip(first, other, strict=True))


def test_alpha_sets_how_skewed_the_sites_are() -> None:
    data = _load("data")
    labels = _labels()
    skew = {
        alpha: np.mean([_skew(labels, data.dirichlet_split(labels, 4, alpha, s)) for s in range(5)])
        for alpha in (0.1, 0.5, 1.0, 100.0)
    }
    assert skew[0.1] > skew[0.5] > skew[1.0] > skew[100.0], skew
    assert skew[0.1] > 0.5, skew  # a few classes per site
    assert skew[100.0] < 0.05, skew  # close to an even split
    # Non-IID at the default alpha: some site lacks most of some class.
    parts = data.dirichlet_split(labels, 2, 0.5, seed=0)
    shares = np.array([np.bincount(labels[p], minlength=10) for p in parts]) / 600
    assert shares.min() < 0.1, shares


def test_bad_alpha_and_impossible_splits_are_refused() -> None:
    data = _load("data")
    labels = _labels(per_class=3)
    for alpha in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="alpha must be a positive number"):
            data.dirichlet_split(labels, 2, alpha)
    with pytest.raises(ValueError, match="gives each of 8 sites 10 examples"):
        data.dirichlet_split(labels, 8, 0.5)  # 30 examples cannot give 8 sites 10 each


def test_a_bad_mnist_path_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data = _load("data")
    monkeypatch.setenv("SHOAL_MNIST_PATH", str(tmp_path / "missing.npz"))
    with pytest.raises(RuntimeError, match="SHOAL_MNIST_PATH=.*missing.npz"):
        data.load_mnist()


@needs_mnist
def test_site_shards_from_the_npz_need_neither_torch_nor_torchvision() -> None:
    code = (
        "import sys, numpy as np; sys.path.insert(0, sys.argv[1]); import data\n"
        "parts = [data.site_shard(i, 2, 0.5, 0) for i in range(2)]\n"
        "(x, _), _ = data.load_mnist()\n"
        "assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0\n"
        "assert sum(len(p[0][0]) for p in parts) == 60000\n"
        "assert sum(len(p[1][0]) for p in parts) == 10000\n"
        "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(JOB / "app")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@needs_mnist
def test_each_site_tests_on_its_own_label_mix() -> None:
    data = _load("data")
    for index in range(2):
        (_, y_train), (_, y_test) = data.site_shard(index, 2, alpha=0.5, seed=0)
        train_mix = np.bincount(y_train, minlength=10) / len(y_train)
        test_mix = np.bincount(y_test, minlength=10) / len(y_test)
        assert 0.5 * np.abs(train_mix - test_mix).sum() < 0.05, (train_mix, test_mix)


@needs_torch
def test_the_model_is_seeded_and_its_buffers_travel() -> None:
    import torch

    from shoal.frameworks import adapter_for

    model = _load("model")
    net = model.build_model()
    assert adapter_for(net).suffix == ".pt"
    state = torch.get_rng_state()
    again = model.build_model()
    assert torch.equal(torch.get_rng_state(), state), "building must not move the caller's RNG"
    params = adapter_for(net).get_weights(net)
    assert params.keys() == net.state_dict().keys()
    assert "features.1.running_mean" in params and "features.1.num_batches_tracked" in params
    for name, value in adapter_for(again).get_weights(again).items():
        np.testing.assert_array_equal(value, params[name])
    logits = net(torch.zeros(3, 28, 28))
    assert logits.shape == (3, 10)
    no_images = torch.zeros(0, 28, 28), torch.zeros(0, dtype=torch.int64)
    assert model.evaluate_model(net, *no_images) == {}


@needs_mnist
@needs_torch
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_simulate_hello_pt_reaches_the_stated_accuracy(tmp_path: Path) -> None:
    import torch

    out = subprocess.run(
        [sys.executable, "-m", "shoal", "simulate", str(JOB), "-n", "2", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=550,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "round 5/5: 2/2 sites" in out.stdout
    run = tmp_path / "hello-pt"
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["round"] == 5
    assert last["server"]["accuracy"] >= MIN_ACCURACY, last
    for site in ("site-1", "site-2"):
        assert "round 5/5" in (run / "logs" / f"{site}.log").read_text()

    # The native PyTorch model is the server's final model: it loads into the
    # example's network and scores the accuracy the server measured.
    net = _load("model").Net()
    net.load_state_dict(torch.load(run / "models" / "global_final.pt", weights_only=True))
    with np.load(MNIST) as f:
        x = torch.from_numpy(f["x_test"].astype(np.float32) / 255.0)
        y = torch.from_numpy(f["y_test"].astype(np.int64))
    net.eval()
    with torch.no_grad():
        accuracy = float((net(x).argmax(dim=1) == y).float().mean())
    assert accuracy == pytest.approx(last["server"]["accuracy"], abs=1e-3)
