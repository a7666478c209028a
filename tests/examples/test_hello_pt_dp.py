"""hello-pt-dp: DP-SGD with Opacus at each site, simulated; each site's
reported epsilon is what dp-accounting gives for the same mechanism."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest

from shoal.privacy.accounting import gaussian_epsilon
from shoal.sim import SimulatorConfig, simulate

JOB = Path(__file__).resolve().parents[2] / "examples" / "hello-pt-dp"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("SHOAL_MNIST_PATH"), reason="SHOAL_MNIST_PATH is not set"
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("opacus") is None, reason="opacus is not installed (shoal[dp])"
    ),
]


def test_dp_sgd_sites_report_the_accountants_epsilon(tmp_path: Path) -> None:
    result = simulate(SimulatorConfig(job_dir=JOB, num_sites=2, workdir=tmp_path))
    assert result.ok, result.failure_summary()
    lines = [json.loads(x) for x in result.metrics_path.read_text().splitlines()]
    assert len(lines) == 3
    # 30,000 images per site, expected batch 64: Opacus samples each example
    # with q = 1 / ceil(30000 / 64); 60 noised steps (z = 1) per round.
    q = 1 / math.ceil(30000 / 64)
    for k, line in enumerate(lines, start=1):
        want = gaussian_epsilon(
            noise_multiplier=1.0, sampling_fraction=q, rounds=60 * k, delta=1e-5
        )
        for metrics in line["sites"].values():
            assert metrics["dp_sgd_epsilon"] == pytest.approx(want, rel=1e-3)
    assert lines[-1]["server"]["accuracy"] > 0.75
