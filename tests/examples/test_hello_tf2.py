"""The reference job: its data sharding, and (slow) a real simulated run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

JOB = Path(__file__).resolve().parents[2] / "examples" / "hello-tf2"
MNIST = os.environ.get("SHOAL_MNIST_PATH")
needs_mnist = pytest.mark.skipif(
    not MNIST, reason="SHOAL_MNIST_PATH is not set (the Makefile points it at a local mnist.npz)"
)


def _load(name: str) -> ModuleType:
    # A private module name: the app's plain "data" must not shadow anything.
    spec = importlib.util.spec_from_file_location(f"hello_tf2_{name}", JOB / "app" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_job_spec_is_valid_and_does_not_pin_sites() -> None:
    from shoal.jobs.spec import load_job_spec

    spec = load_job_spec(JOB)
    assert spec.name == "hello-tf2" and spec.min_clients == 2 and spec.sites is None
    assert spec.workflow.name == "fedavg" and spec.workflow.params["num_rounds"] == 3
    assert spec.server.model == "model:build_model"
    assert spec.server.evaluate == "evaluate:evaluate"


def test_split_weights() -> None:
    data = _load("data")
    np.testing.assert_allclose(data.parse_split("even", 4), [0.25] * 4)
    np.testing.assert_allclose(data.parse_split("7,3", 2), [0.7, 0.3])
    with pytest.raises(ValueError, match="expected 2 positive weights"):
        data.parse_split("0.5,0.3,0.2", 2)
    with pytest.raises(ValueError, match="'even' or comma-separated"):
        data.parse_split("half", 2)


def test_a_bad_mnist_path_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data = _load("data")
    monkeypatch.setenv("SHOAL_MNIST_PATH", str(tmp_path / "missing.npz"))
    with pytest.raises(RuntimeError, match="SHOAL_MNIST_PATH=.*missing.npz"):
        data.load_mnist()


@needs_mnist
@pytest.mark.parametrize(
    ("split", "sizes"), [("even", (30000, 30000)), ("0.7,0.3", (42000, 18000))]
)
def test_site_shards_are_disjoint_and_cover_the_data(split: str, sizes: tuple[int, int]) -> None:
    data = _load("data")
    (x_tr, _), (x_te, _) = data.load_mnist()
    assert x_tr.dtype == np.float32 and x_tr.min() >= 0.0 and x_tr.max() <= 1.0
    shards = [data.site_shard(i, 2, split) for i in range(2)]
    assert tuple(len(s[0][0]) for s in shards) == sizes
    assert sum(len(s[1][0]) for s in shards) == len(x_te)
    # Disjoint: no training image is in both shards (compare by content hash).
    hashes = [{hash(img.tobytes()) for img in s[0][0][:2000]} for s in shards]
    assert not hashes[0] & hashes[1]
    # The same shard on every call (each site computes its own).
    np.testing.assert_array_equal(data.site_shard(1, 2, split)[0][1], shards[1][0][1])


@needs_mnist
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_simulate_hello_tf2_reaches_96_percent(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "shoal", "simulate", str(JOB), "-n", "2", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=850,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "round 3/3: 2/2 sites" in out.stdout
    run = tmp_path / "hello-tf2"
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["round"] == 3
    assert last["server"]["accuracy"] >= 0.96, last
    assert (run / "models" / "global_final.keras").is_file()
    for site in ("site-1", "site-2"):
        assert "round 3/3" in (run / "logs" / f"{site}.log").read_text()


@needs_mnist
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_hello_tf2_answers_validate_tasks(tmp_path: Path) -> None:
    """The same script, in an evaluate job: each site evaluates the untrained
    model on its test images and sends metrics, no weights."""
    import shutil

    job = tmp_path / "job"
    shutil.copytree(JOB, job, ignore=shutil.ignore_patterns("__pycache__"))
    text = (job / "job.yml").read_text()
    (job / "job.yml").write_text(
        text.replace("  name: fedavg\n  num_rounds: 3\n", "  name: evaluate\n")
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "shoal",
            "simulate",
            str(job),
            "-n",
            "2",
            "-w",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=550,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads((tmp_path / "out" / "hello-tf2" / "evaluation.json").read_text())
    assert [summary["sites"][s]["num_examples"] for s in ("site-1", "site-2")] == [5000, 5000]
    # An untrained 10-class classifier: about chance.
    assert 0.0 < summary["aggregated"]["accuracy"] < 0.3
    assert summary["aggregated"]["loss"] > 1.0
