"""Every privacy mechanism in ``shoal simulate``: local DP, exclusion,
percentile privacy and 16-bit updates at the sites; central DP-FedAvg with
fixed and adaptive clipping, and its budget ending the job."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.arrays import load_arrays
from shoal.privacy.accounting import gaussian_epsilon
from shoal.sim import SimulatorConfig, simulate
from shoal.workflows.dp_fedavg import SEED_FILE, secret_seed

from .privacyjob import (
    CENTRAL,
    LOCAL_FILTERS,
    check_central_run,
    check_local_dp_run,
    metrics,
    write_job,
)


def _sim(job: Path, tmp_path: Path, mode: str = "threads"):  # type: ignore[no-untyped-def]
    result = simulate(
        SimulatorConfig(job_dir=job, num_sites=2, workdir=tmp_path / "runs", mode=mode)
    )
    assert result.ok, result.failure_summary()
    return result


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_site_filters_local_dp_and_quantized_updates(tmp_path: Path, mode: str) -> None:
    job = write_job(tmp_path / "job", filters=LOCAL_FILTERS)
    result = _sim(job, tmp_path, mode)
    final = load_arrays(result.models_dir / "global_final.safetensors", mmap=False)
    check_local_dp_run(result.run_dir, final, rounds=3)


def test_central_dp_fixed_clipping(tmp_path: Path) -> None:
    result = _sim(write_job(tmp_path / "job", workflow="dp_fedavg", params=CENTRAL), tmp_path)
    check_central_run(result.run_dir, rounds=3)
    assert {x["server"]["dp_clip_norm"] for x in metrics(result.run_dir)} == {0.5}


def test_central_dp_adaptive_clipping_moves_the_clip_norm(tmp_path: Path) -> None:
    params = (
        CENTRAL + "  adaptive_clipping: true\n  clip_count_stddev: 1.0\n  target_quantile: 0.9\n"
    )
    result = _sim(write_job(tmp_path / "job", workflow="dp_fedavg", params=params), tmp_path)
    check_central_run(result.run_dir, rounds=3, z_update=(1 - 0.5**2) ** -0.5)
    norms = [x["server"]["dp_clip_norm"] for x in metrics(result.run_dir)]
    assert norms[0] == 0.5 and len(set(norms)) == 3


def test_the_privacy_budget_ends_the_job_completed(tmp_path: Path) -> None:
    # z = 1, q = 1, delta 1e-5: epsilon 4.75, 7.09, 9.09 after 1, 2, 3 rounds.
    params = CENTRAL + "  max_epsilon: 8.0\n"
    result = _sim(
        write_job(tmp_path / "job", workflow="dp_fedavg", params=params, rounds=10), tmp_path
    )
    check_central_run(result.run_dir, rounds=2)
    final = load_arrays(result.models_dir / "global_final.safetensors", mmap=False)
    last = load_arrays(result.models_dir / "global_round_0002.safetensors", mmap=False)
    assert final.keys() == last.keys() and all((final[k] == last[k]).all() for k in final)
    log = (result.log_dir / "server.log").read_text()
    assert "stopping before round 3: privacy budget: round 3 would bring epsilon to" in log


@pytest.mark.parametrize(("secret", "q"), [(True, 0.5), (False, 1.0)])
def test_sampling_amplifies_only_when_the_sample_is_secret(
    tmp_path: Path, secret: bool, q: float
) -> None:
    params = CENTRAL + f"  sample_fraction: 0.5\n  secret_sampling: {str(secret).lower()}\n"
    job = write_job(tmp_path / "job", workflow="dp_fedavg", params=params, rounds=2)
    result = simulate(SimulatorConfig(job_dir=job, num_sites=4, workdir=tmp_path / "runs"))
    assert result.ok, result.failure_summary()
    eps = [x["server"]["dp_epsilon"] for x in metrics(result.run_dir)]
    assert eps == [
        gaussian_epsilon(noise_multiplier=1.0, sampling_fraction=q, rounds=k, delta=1e-5)
        for k in (1, 2)
    ]
    seed_file = result.run_dir / SEED_FILE
    assert seed_file.exists() == secret
    if secret:
        assert seed_file.stat().st_mode & 0o777 == 0o600
        assert secret_seed(result.run_dir) == int(seed_file.read_text())  # kept for resume
    else:
        assert "accounted without amplification" in (result.log_dir / "server.log").read_text()
