"""The privacy mechanisms through real daemons from real kits (mutual TLS):
a site's own ``local/filters.yml`` adds local DP the job cannot remove, the
job excludes a variable, applies percentile privacy and quantizes updates
to 16 bits (the server dequantizes them), and the server runs central
DP-FedAvg with adaptive clipping, its accounting and its budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from privacy.privacyjob import CENTRAL, check_central_run, metrics, write_job

from shoal.arrays import load_arrays
from shoal.privacy.accounting import gaussian_epsilon

from .conftest import Federation

pytestmark = pytest.mark.slow

SITE_FILTERS = """result_out:
  - {filter: clip, args: {max_norm: 1.0}}
  - {filter: gaussian, args: {sigma: 2.0, clip_norm: 1.0, delta: 1.0e-5}}
"""
JOB_FILTERS = """filters:
  result_out:
    - {filter: exclude_vars, args: {regex: "^b$"}}
    - {filter: percentile_privacy, args: {percentile: 5, gamma: 10.0}}
    - {filter: quantize, args: {bits: 16}}
  result_in: [dequantize]
"""
ADAPTIVE = "  adaptive_clipping: true\n  clip_count_stddev: 1.0\n  target_quantile: 0.9\n"


def test_local_and_central_dp_and_quantized_updates_through_the_daemons(
    federation: Federation, tmp_path: Path
) -> None:
    kit = federation.layout.site_kits["site-1"]
    (kit / "local").mkdir(exist_ok=True)
    (kit / "local" / "filters.yml").write_text(SITE_FILTERS)
    s = federation.admin()
    params = CENTRAL + ADAPTIVE + "  max_epsilon: 8.0\n"
    job = write_job(
        tmp_path / "job", workflow="dp_fedavg", params=params, rounds=5, filters=JOB_FILTERS
    )
    job_id = s.submit_job(job)
    meta = s.wait_for_job(job_id, timeout=180)
    assert meta["status"] == "FINISHED:COMPLETED", meta
    out = s.download_job(job_id, tmp_path / "dl")
    # The budget ended the job after round 2 (epsilon 7.09; round 3: 9.09).
    check_central_run(out / "run", rounds=2, z_update=(1 - 0.5**2) ** -0.5)
    norms = [x["server"]["dp_clip_norm"] for x in metrics(out / "run")]
    assert norms[0] == 0.5 and norms[1] != 0.5  # adaptive clipping moved C
    last_eps = metrics(out / "run")[-1]["server"]["dp_epsilon"]
    listed = {j.job_id: j for j in s.list_jobs()}
    assert listed[job_id].dp_epsilon == last_eps  # list_jobs shows the epsilon spent
    assert s.get_job_meta(job_id).dp_epsilon == last_eps
    stats = s.show_stats(job_id)
    assert [m["server"]["dp_epsilon"] for m in stats.metrics] == [
        x["server"]["dp_epsilon"] for x in metrics(out / "run")
    ]
    # Site-1's own mechanism, accounted at the site, after the job's quantize.
    for k, line in enumerate(metrics(out / "run"), start=1):
        eps = line["sites"]["site-1"]["local_dp_epsilon"]
        assert eps == gaussian_epsilon(
            noise_multiplier=2.0, sampling_fraction=1, rounds=k, delta=1e-5
        )
        assert "local_dp_epsilon" not in line["sites"]["site-2"]
    final = load_arrays(out / "run" / "models" / "global_final.safetensors", mmap=False)
    assert final["w"].dtype == np.float64 and np.isfinite(final["w"]).all()
    site1 = s.get_log(job_id, "site-1")
    assert (
        "result_out filters ran on site-1 (round 1): job:exclude_vars, job:percentile_privacy, "
        "job:quantize, site:clip, site:gaussian" in site1
    ), site1
    server = s.get_log(job_id, "server")
    assert "stopping before round 3: privacy budget" in server, server
