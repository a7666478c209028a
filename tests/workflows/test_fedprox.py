"""FedProx at the server: FedAvg's rounds, ``mu`` in every task's meta
(through the driver's ``Policies.task_meta``), over the job's client.config."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from shoal.arrays import load_arrays
from shoal.errors import JobValidationError
from shoal.workflows import get_workflow, parse_params
from shoal.workflows.fedprox import FedProxParams

from .fakes import shift
from .test_fedavg import _comm, _ctx, _spec


def test_mu_reaches_every_task_and_the_aggregate_is_fedavgs(tmp_path: Path) -> None:
    comm = _comm(tmp_path, {"site-1": shift(1.0, 100), "site-2": shift(3.0, 300)})
    spec = _spec()
    spec = replace(spec, client=replace(spec.client, config={"lr": 0.1, "fedprox_mu": 9}))
    get_workflow("fedprox")(_ctx(tmp_path, comm, spec=spec, num_rounds=3, mu=0.25))
    # The workflow's key wins over client.config's; the driver's stay.
    assert [s["meta"] for s in comm.scatters] == [
        {"lr": 0.1, "fedprox_mu": 0.25, "current_round": k, "total_rounds": 3} for k in (1, 2, 3)
    ]
    # FedAvg's numbers: 2.5 a round; no server state.
    final = load_arrays(tmp_path / "run" / "models" / "global_final.safetensors")
    np.testing.assert_array_equal(final["w"], np.full((2, 3), 7.5, np.float32))
    assert not (tmp_path / "run" / "server_state").exists()


def test_fedavg_sends_no_mu(tmp_path: Path) -> None:
    comm = _comm(tmp_path, {"site-1": shift(1.0, 1), "site-2": shift(1.0, 1)})
    get_workflow("fedavg")(_ctx(tmp_path, comm, num_rounds=1))
    assert comm.scatters[0]["meta"] == {"current_round": 1, "total_rounds": 1}


def test_params() -> None:
    assert parse_params("fedprox", {"num_rounds": 2}) == FedProxParams(num_rounds=2, mu=0.01)
    assert parse_params("fedprox", {"num_rounds": 2, "mu": 0}).mu == 0.0
    with pytest.raises(JobValidationError, match=r"workflow.mu: must be in \[0, 10000\], got -1.0"):
        parse_params("fedprox", {"num_rounds": 2, "mu": -1})
    p = parse_params("fedprox", {"num_rounds": 2, "aggregator": "median", "sample_fraction": 0.5})
    assert (p.aggregator, p.sample_fraction, p.seed) == ("median", 0.5, 0)
