"""``aggregator:`` in job.yml: every averaging workflow takes a robust
aggregate, checked at submit, and a site sending scaled or sign-flipped
weights derails FedAvg's mean but not the robust choices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shoal.arrays import load_arrays
from shoal.errors import JobValidationError
from shoal.jobs import ClientAppSpec, JobSpec, ServerAppSpec, WorkflowSpec
from shoal.workflows import check_spec, get_workflow, parse_params
from shoal.workflows.fedopt import adaptive, momentum

from .fakes import SiteFn
from .test_fedavg import _comm, _ctx

ROUND_WORKFLOWS = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")


def _spec(params: dict[str, Any], *, min_clients: int = 5, name: str = "fedavg") -> JobSpec:
    return JobSpec(
        name="t",
        min_clients=min_clients,
        workflow=WorkflowSpec(name=name, params={"num_rounds": 2, **params}),
        client=ClientAppSpec(script="train.py"),
        server=ServerAppSpec(initial_weights="model:initial"),
    )


@pytest.mark.parametrize("name", ROUND_WORKFLOWS)
def test_every_round_workflow_takes_the_aggregator_params(name: str) -> None:
    p = parse_params(name, {"num_rounds": 2, "aggregator": "multi_krum", "multi_krum_m": 3})
    assert (p.aggregator, p.krum_byzantine, p.multi_krum_m) == ("multi_krum", 1, 3)
    assert parse_params(name, {"num_rounds": 2}).aggregator == "mean"
    with pytest.raises(
        JobValidationError,
        match=r"^job.yml: workflow.aggregator: must be one of mean, median, trimmed_mean, "
        r"krum, multi_krum, got 'mode'$",
    ):
        parse_params(name, {"num_rounds": 2, "aggregator": "mode"})
    with pytest.raises(JobValidationError, match=r"workflow.trim_fraction: must be in \[0, 0.5\)"):
        parse_params(name, {"num_rounds": 2, "trim_fraction": 0.5})
    check_spec(name, _spec({"aggregator": "krum"}, name=name))


def test_what_an_aggregator_needs_is_checked_at_submit() -> None:
    # Krum needs n >= 2f + 3 results, and a round may go on with min_clients.
    with pytest.raises(
        JobValidationError,
        match=r"^job.yml: min_clients: fedavg with aggregator krum and krum_byzantine=2 "
        r"needs min_clients >= 2f \+ 3 = 7, got 5$",
    ):
        check_spec("fedavg", _spec({"aggregator": "krum", "krum_byzantine": 2}))
    check_spec("fedavg", _spec({"aggregator": "krum", "krum_byzantine": 0}, min_clients=3))
    # An option for another aggregator is a mistake, not a no-op.
    with pytest.raises(
        JobValidationError,
        match=r"^job.yml: workflow.trim_fraction: only trimmed_mean read it, "
        r"and the aggregator is median$",
    ):
        check_spec("fedadam", _spec({"aggregator": "median", "trim_fraction": 0.2}, name="fedadam"))
    with pytest.raises(JobValidationError, match="workflow.multi_krum_m: only multi_krum"):
        check_spec("fedavg", _spec({"aggregator": "krum", "multi_krum_m": 2}))


# -- a Byzantine site through the round driver --------------------------------


def _honest(target: float, n: int) -> SiteFn:
    """A site whose training moves each weight half way to ``target``."""

    def fn(g: dict[str, np.ndarray], rnd: int) -> Any:
        return {k: (v + (target - v) * 0.5).astype(v.dtype) for k, v in g.items()}, n, {}

    return fn


def _attacker(kind: str) -> SiteFn:
    """Trains honestly, then sends its weights times 100 or negated, claiming
    ten times the examples of an honest site."""
    honest = _honest(1.0, 1000)

    def fn(g: dict[str, np.ndarray], rnd: int) -> Any:
        params, n, metrics = honest(g, rnd)
        factor = 100.0 if kind == "scaled" else -1.0
        return {k: (v * factor).astype(v.dtype) for k, v in params.items()}, n, metrics

    return fn


def _federation(kind: str) -> dict[str, SiteFn]:
    # Four honest sites pulling towards 0.9 .. 1.2 (mean 1.05), one attacker.
    sites = {f"site-{i + 1}": _honest(t, 100) for i, t in enumerate((0.9, 1.0, 1.1, 1.2))}
    sites["site-5"] = _attacker(kind)
    return sites


@pytest.mark.parametrize("kind", ["scaled", "flipped"])
@pytest.mark.parametrize(
    ("aggregator", "extra"),
    [
        ("median", {}),
        ("trimmed_mean", {"trim_fraction": 0.2}),
        ("krum", {}),
        ("multi_krum", {}),
    ],
)
def test_one_byzantine_site_derails_the_mean_but_not_a_robust_aggregate(
    tmp_path: Path, kind: str, aggregator: str, extra: dict[str, Any]
) -> None:
    spec = _spec({}, min_clients=5)
    mean = _comm(tmp_path, _federation(kind))
    get_workflow("fedavg")(_ctx(tmp_path, mean, spec=spec, run_dir="mean", num_rounds=6))
    robust = _comm(tmp_path, _federation(kind))
    ctx = _ctx(
        tmp_path,
        robust,
        spec=spec,
        run_dir="robust",
        num_rounds=6,
        aggregator=aggregator,
        **extra,
    )
    get_workflow("fedavg")(ctx)
    derailed = load_arrays(tmp_path / "mean" / "models" / "global_final.safetensors")["w"]
    held = load_arrays(tmp_path / "robust" / "models" / "global_final.safetensors")["w"]
    # The honest sites agree on ~0.9 .. 1.2; the weighted mean (the attacker
    # holds 1000 of 1400 examples) is pulled far up (scaled) or to ~-0.17 (flipped).
    assert np.all(np.abs(derailed - 1.05) > 1.0)
    np.testing.assert_allclose(held, 1.05, atol=0.15)


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_a_server_optimizer_steps_along_a_robust_aggregate(tmp_path: Path, name: str) -> None:
    # Round 1 from 0: the honest sites send 0.45, 0.5, 0.55, 0.6 and the
    # attacker 100 * 0.5 = 50; their median, 0.55, is what the update gets.
    comm = _comm(tmp_path, _federation("scaled"))
    spec = _spec({}, min_clients=5, name=name)
    get_workflow(name)(
        _ctx(tmp_path, comm, spec=spec, num_rounds=2, server_lr=0.3, aggregator="median")
    )
    p = parse_params(name, {"num_rounds": 2, "server_lr": 0.3})
    if name == "fedavgm":
        update = momentum(p.server_lr, p.server_momentum)
    else:
        rule = name.removeprefix("fed")
        update = adaptive(rule, lr=p.server_lr, beta1=p.beta1, beta2=p.beta2, tau=p.tau)
    zero = np.zeros((2, 3), np.float32)
    want = update({"w": zero}, {"w": np.full((2, 3), 0.55, np.float32)}, {}).params["w"]
    got = load_arrays(tmp_path / "run" / "models" / "global_round_0001.safetensors")["w"]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert 0 < float(got[0, 0]) < 0.55  # a step towards the median, not towards 50
