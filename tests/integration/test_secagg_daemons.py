"""Secure aggregation through real daemons from real kits, over mutual TLS:
each site's keys signed under a delegation from its certificate (made by
its site daemon: the worker never holds the site's key), a site whose
worker is killed after it sent its masked update does not stop the round,
and the global model is FedAvg's within the quantization error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from privacy.secaggjob import SHAPES, bound, expected_model, write_secagg_job

from shoal.arrays import load_arrays

from .conftest import Federation

pytestmark = pytest.mark.slow


def test_secure_rounds_through_the_daemons_survive_a_killed_site(
    federation_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    fed: Federation = federation_factory(3)
    s = fed.admin()
    job = write_secagg_job(
        tmp_path / "job", rounds=2, min_clients=2, drop=("site-3", 1, "kill", "after")
    )
    job_id = s.submit_job(job)
    meta = s.wait_for_job(job_id, timeout=240)
    assert meta["status"] == "FINISHED:COMPLETED", meta
    out = s.download_job(job_id, tmp_path / "dl")
    lines = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    everyone = ["site-1", "site-2", "site-3"]
    first, second = lines[0]["secagg"], lines[1]["secagg"]
    # Every key was signed (and every site checked its peers' signatures
    # against the project's CA, or it would have refused the round).
    assert first["signed"] == everyone
    # site-3's masked update is in round 1's sum; it never answered the
    # unmasking stage; round 2 went on without it.
    assert first["survivors"] == everyone
    assert "secagg_unmask" in first["refused"]["site-3"]
    assert second["survivors"] == ["site-1", "site-2"]
    final = load_arrays(out / "run" / "models" / "global_final.safetensors", mmap=False)
    want = expected_model(job, everyone, 2, dropped={2: {"site-3"}})
    tol = 2 * bound(3, clip_range=0.5, max_weight=10_000, weight_sum=30, n=3)
    for name in SHAPES:
        ulp = np.spacing(np.abs(want[name]).astype(np.float32))
        assert (np.abs(final[name].astype(np.float64) - want[name]) <= tol + 2 * ulp).all()
    assert "leaves after its masked update of round 1" in s.get_log(job_id, "site-3")
    assert "keys unsigned" not in s.get_log(job_id, "site-1")
