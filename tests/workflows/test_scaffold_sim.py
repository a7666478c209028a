"""SCAFFOLD end to end in ``shoal simulate``: on a non-IID least-squares split
it reaches the optimum FedAvg misses, with the numpy helper and the PyTorch
one, in both simulator modes; each simulated site keeps its c_i in a state
folder of its own, and the server's c stays the mean of the sites' c_i."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shoal.arrays import load_arrays
from shoal.client.scaffold import STATE_FILE
from shoal.sim import SimulatorConfig, simulate

from .scaffoldjob import reference, write_scaffold_job


def _run(tmp_path: Path, *, workflow: str, framework: str = "numpy", mode: str = "threads"):  # type: ignore[no-untyped-def]
    job = write_scaffold_job(
        tmp_path / f"{workflow}-{framework}", workflow=workflow, framework=framework
    )
    result = simulate(
        SimulatorConfig(job_dir=job, num_sites=4, workdir=tmp_path / "runs", mode=mode)
    )
    assert result.ok, result.failure_summary()
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    return result.run_dir, lines


def _check_c_is_the_mean_of_the_sites_c_i(run_dir: Path, rounds: int) -> None:
    c_i = [
        load_arrays(run_dir / "site_state" / f"site-{k}" / STATE_FILE, mmap=False)["lin.weight"]
        for k in range(1, 5)
    ]
    state = load_arrays(run_dir / "server_state" / f"round_{rounds:04d}.safetensors", mmap=False)
    assert sorted(state) == ["c/lin.weight"]
    # c0 = c_i = 0 and c moves by (1/N) sum(delta c_i): c = mean(c_i) while
    # every site's change arrives. Near the optimum each c_i is its site's
    # gradient there, far from 0, and their mean is the mean loss's, near 0.
    np.testing.assert_allclose(state["c/lin.weight"], np.mean(c_i, axis=0), atol=1e-5)
    assert min(float(np.abs(c).max()) for c in c_i) > 1.0


def test_scaffold_reaches_the_optimum_fedavg_misses(tmp_path: Path) -> None:
    fedavg_dir, fedavg = _run(tmp_path, workflow="fedavg")
    scaffold_dir, scaffold = _run(tmp_path, workflow="scaffold")
    # Round by round as Algorithm 1 (and FedAvg) run in float64 here; the
    # federation keeps weights and control variates in float32.
    for name, lines in (("fedavg", fedavg), ("scaffold", scaffold)):
        got = [line["server"]["dist"] for line in lines]
        np.testing.assert_allclose(got, reference(name), rtol=1e-4, atol=1e-5, err_msg=name)
    dist = {"fedavg": fedavg[-1]["server"]["dist"], "scaffold": scaffold[-1]["server"]["dist"]}
    assert dist["fedavg"] > 1.5 and dist["scaffold"] < 0.08, dist
    assert scaffold[-1]["server"]["excess_loss"] < 0.01 < 3 < fedavg[-1]["server"]["excess_loss"]
    # FedAvg's sites keep no state; SCAFFOLD's each its own c_i.
    assert not (fedavg_dir / "site_state").exists()
    assert sorted(p.name for p in (scaffold_dir / "site_state").iterdir()) == [
        "site-1",
        "site-2",
        "site-3",
        "site-4",
    ]
    _check_c_is_the_mean_of_the_sites_c_i(scaffold_dir, 10)
    # Each round's sites found the c_i their previous round left.
    for line in scaffold:
        assert {m["c_i_round"] for m in line["sites"].values()} == {line["round"] - 1}


def test_the_pytorch_helper_in_the_simulator(tmp_path: Path) -> None:
    run_dir, lines = _run(tmp_path, workflow="scaffold", framework="torch")
    got = [line["server"]["dist"] for line in lines]
    np.testing.assert_allclose(got, reference("scaffold"), rtol=1e-3, atol=1e-4)
    _check_c_is_the_mean_of_the_sites_c_i(run_dir, 10)


@pytest.mark.slow
def test_site_state_folders_in_processes_mode(tmp_path: Path) -> None:
    run_dir, lines = _run(tmp_path, workflow="scaffold", mode="processes")
    got = [line["server"]["dist"] for line in lines]
    np.testing.assert_allclose(got, reference("scaffold"), rtol=1e-4, atol=1e-5)
    _check_c_is_the_mean_of_the_sites_c_i(run_dir, 10)
