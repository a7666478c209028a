"""The ``secagg`` workflow in ``shoal simulate``: the global model is
FedAvg's within the quantization error; a site that leaves after its
masked update does not stop the round; what the server receives of one
site's update is indistinguishable from uniform bytes."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shoal.arrays import load_arrays
from shoal.client.model import FLModel
from shoal.sim import SimulatorConfig, simulate
from shoal.sim.site import SimBackend

from .secaggjob import SHAPES, bound, expected_model, write_secagg_job


def _final(run_dir: Path) -> dict[str, np.ndarray]:
    return load_arrays(run_dir / "models" / "global_final.safetensors", mmap=False)


def _lines(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_fedavg(final: dict, want: dict, tol: float) -> None:
    for name in SHAPES:
        assert final[name].dtype == np.float32
        ulp = np.spacing(np.abs(want[name]).astype(np.float32))
        err = np.abs(final[name].astype(np.float64) - want[name])
        assert (err <= tol + 2 * ulp).all(), float(err.max())
    np.testing.assert_array_equal(final["steps"], [0])


def _simulate(job: Path, tmp_path: Path) -> Path:
    """``job`` simulated with 4 sites in threads; its run folder."""
    result = simulate(
        SimulatorConfig(job_dir=job, num_sites=4, workdir=tmp_path / "runs", mode="threads")
    )
    assert result.ok, result.failure_summary()
    return result.run_dir


def test_secure_rounds_give_fedavg_within_the_quantization_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = write_secagg_job(tmp_path / "job", rounds=2, min_clients=3)
    sent: list[FLModel] = []
    real_send = SimBackend.send

    def spy(self: SimBackend, model: FLModel) -> None:  # records, then sends as ever
        if "secagg/weight" in model.extras:  # a masked update, not a stage's answer
            sent.append(model)
        real_send(self, model)

    monkeypatch.setattr(SimBackend, "send", spy)
    run_dir = _simulate(job, tmp_path)
    sites = [f"site-{i}" for i in range(1, 5)]
    weight_sum = sum(10 * (i + 1) for i in range(4))
    tol = 2 * bound(4, clip_range=0.5, max_weight=10_000, weight_sum=weight_sum, n=4)
    _assert_fedavg(_final(run_dir), expected_model(job, sites, 2), tol)
    lines = _lines(run_dir)
    assert [x["secagg"]["survivors"] for x in lines] == [sites, sites]
    # The script never saw the protocol's message beside the weights.
    assert {m["extras_seen"] for x in lines for m in x["sites"].values()} == {0.0}
    assert lines[0]["num_examples"] == weight_sum

    # What the server received of each site: uint32 arrays whose bytes are
    # uniform (chi-square, 255 degrees of freedom; 400 is p < 1e-8 for
    # uniform bytes), where the same update quantized but unmasked is not.
    assert len(sent) == 8
    for model in sent:
        assert set(model.params) == set(SHAPES) and model.params["w"].dtype == np.uint32
        assert _chi2(model.params["w"]) < 400
    ring_levels = (2**32 - 1) // 4
    plain = np.round(
        (np.clip(np.random.default_rng(1).uniform(-0.4, 0.4, SHAPES["w"]), -0.5, 0.5) + 0.5)
        * ring_levels
    )
    assert _chi2(plain.astype(np.uint32)) > 10_000


def _chi2(values: np.ndarray) -> float:
    counts = np.bincount(np.ascontiguousarray(values).view(np.uint8).reshape(-1), minlength=256)
    expected = counts.sum() / 256
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("when", ["after", "before"])
def test_a_site_leaving_mid_round_does_not_stop_it(tmp_path: Path, when: str) -> None:
    job = write_secagg_job(
        tmp_path / "job", rounds=2, min_clients=3, drop=("site-2", 1, "exit", when)
    )
    run_dir = _simulate(job, tmp_path)
    lines = _lines(run_dir)
    everyone = [f"site-{i}" for i in range(1, 5)]
    rest = [s for s in everyone if s != "site-2"]
    first = lines[0]["secagg"]
    if when == "after":
        # Its masked update is in the sum; its self mask came off with the
        # others' shares, though it never answered the unmasking stage.
        assert first["survivors"] == everyone and first["dropped"] == []
        assert "no answer" in first["refused"]["site-2"]
        dropped = {2: {"site-2"}}
    else:
        # It shared but sent no update: the survivors' masks with it came
        # off with the shares of its key.
        assert first["survivors"] == rest and first["dropped"] == ["site-2"]
        dropped = {1: {"site-2"}, 2: {"site-2"}}
    # Round 2 goes on without it (its script ended).
    assert lines[1]["secagg"]["advertised"] == rest
    want = expected_model(job, everyone, 2, dropped=dropped)
    weights = sum(10 * (i + 1) for i in (0, 2, 3))
    tol = 2 * bound(4, clip_range=0.5, max_weight=10_000, weight_sum=weights, n=4)
    _assert_fedavg(_final(run_dir), want, tol)


def test_a_job_secure_aggregation_cannot_keep_its_promise_for_is_refused(tmp_path: Path) -> None:
    from shoal.errors import JobValidationError
    from shoal.jobs.spec import load_job_spec
    from shoal.workflows.registry import check_spec

    for extra, message in [
        ("  evaluate_after: true\n", "cross-site evaluation"),
        ("  neighbours: 3\n", "even"),
        ("  bits: 24\n", "one of"),
        ("  max_weight: 2000000000\n", "does not fit"),
    ]:
        folder = write_secagg_job(tmp_path / f"job{len(extra)}", min_clients=3, extra=extra)
        text = (folder / "job.yml").read_text()
        if "neighbours: 3" in extra:
            text = text.replace("  neighbours: 0\n", "")
        (folder / "job.yml").write_text(text)
        with pytest.raises(JobValidationError, match=message):
            spec = load_job_spec(folder)
            check_spec(spec.workflow.name, spec)


def test_a_site_revealing_shares_it_was_not_dealt_is_caught_and_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """site-2 plays a malicious holder: the shares it reveals in round 1 are
    not the ones dealt to it. The server checks each against its dealer's
    commitment, sets site-2's aside, rebuilds the secrets from the others',
    and leaves site-2 out of round 2."""
    from shoal.privacy.secagg.site import SiteRound

    honest = SiteRound.reveal

    def lying(self: SiteRound, doc: dict[str, Any]) -> dict[str, Any]:
        out = honest(self, doc)
        if self.me == "site-2":
            out["b"] = {d: base64.b64encode(bytes(66)).decode() for d in out["b"]}
        return out

    job = write_secagg_job(tmp_path / "job", rounds=2, min_clients=3)
    monkeypatch.setattr(SiteRound, "reveal", lying)
    run_dir = _simulate(job, tmp_path)
    first, second = (x["secagg"] for x in _lines(run_dir))
    assert set(first["inconsistent"]) == {"site-2"}
    assert "does not match" in first["inconsistent"]["site-2"]
    assert first["survivors"] == ["site-1", "site-2", "site-3", "site-4"]
    assert "site-2" not in second["advertised"] and second["excluded"] == ["site-2"]
    everyone = [f"site-{i}" for i in range(1, 5)]
    want = expected_model(job, everyone, 2, dropped={2: {"site-2"}})
    tol = 2 * bound(4, clip_range=0.5, max_weight=10_000, weight_sum=80, n=4)
    _assert_fedavg(_final(run_dir), want, tol)


def test_the_rounds_leave_no_task_files_in_the_results(tmp_path: Path) -> None:
    run_dir = _simulate(write_secagg_job(tmp_path / "job", rounds=1, min_clients=2), tmp_path)
    assert not (run_dir / "secagg").exists()
