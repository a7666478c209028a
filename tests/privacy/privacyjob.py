"""hello-numpy with privacy settings: the simulator tests and the daemon
tests (tests/integration) run the same job folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shoal.privacy.accounting import gaussian_epsilon

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-numpy"

#: Local DP at the site and 16-bit updates on the wire; ``b`` is excluded
#: after the noise, so the server never learns anything of it.
LOCAL_FILTERS = """
filters:
  result_out:
    - {filter: clip, args: {max_norm: 1.0}}
    - {filter: gaussian, args: {sigma: 0.05, clip_norm: 1.0, delta: 1.0e-5}}
    - {filter: exclude_vars, args: {names: [b]}}
    - {filter: percentile_privacy, args: {percentile: 0, gamma: 10.0}}
    - {filter: quantize, args: {bits: 16}}
  result_in: [dequantize]
"""

CENTRAL = """
  noise_multiplier: 1.0
  clip_norm: 0.5
  delta: 1.0e-5
  noise_seed: 3
"""


def write_job(
    dest: Path, *, workflow: str = "fedavg", params: str = "", rounds: int = 3, filters: str = ""
) -> Path:
    """hello-numpy at ``dest`` with ``workflow`` (its extra ``params`` lines) and ``filters``."""
    shutil.copytree(EXAMPLE, dest)
    (dest / "job.yml").write_text(
        f"name: privacy-{workflow}\nmin_clients: 2\n"
        f"workflow:\n  name: {workflow}\n  num_rounds: {rounds}\n  round_timeout_s: 120\n"
        f"{params.lstrip(chr(10))}"
        "client:\n  script: train.py\n  args: [--steps, '10', --lr, '0.1']\n"
        "server:\n  initial_weights: 'model:initial_weights'\n  evaluate: 'model:evaluate'\n"
        f"{filters.lstrip(chr(10))}"
    )
    return dest


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def check_local_dp_run(run_dir: Path, final: dict[str, np.ndarray], *, rounds: int) -> None:
    """Each site's ε after k results is the accountant's; ``b`` never moved."""
    lines = metrics(run_dir)
    assert [x["round"] for x in lines] == list(range(1, rounds + 1))
    for x in lines:
        want = gaussian_epsilon(
            noise_multiplier=0.05, sampling_fraction=1, rounds=x["round"], delta=1e-5
        )
        for m in x["sites"].values():
            assert m["local_dp_epsilon"] == want
    np.testing.assert_array_equal(final["b"], np.zeros(1))
    assert final["w"].dtype == np.float64 and np.isfinite(final["w"]).all()
    assert np.abs(final["w"]).max() > 0.1  # it learned, through the filters


def check_central_run(run_dir: Path, *, rounds: int, z_update: float = 1.0) -> None:
    """ε after each round is the accountant's (z = 1, q = 1); the noise is
    ``z_update * C / m`` with m = 2 sites."""
    lines = metrics(run_dir)
    assert [x["round"] for x in lines] == list(range(1, rounds + 1))
    eps = [x["server"]["dp_epsilon"] for x in lines]
    assert eps == [
        gaussian_epsilon(noise_multiplier=1.0, sampling_fraction=1, rounds=k, delta=1e-5)
        for k in range(1, rounds + 1)
    ]
    for x in lines:
        server = x["server"]
        assert server["dp_noise_std"] == pytest.approx(z_update * server["dp_clip_norm"] / 2)
