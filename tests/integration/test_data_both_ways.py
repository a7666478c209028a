"""The data job of tests/filters through real daemons from real kits: client
configuration, meta, extras and weight differences cross mutual TLS and the
workflow process as they cross the simulator, the job's filters run at all
four points, and a site's own filters (its kit's ``local/filters.yml``) run
around the job's: first on what comes in, last on what goes out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from filters.datajob import write_data_job
from filters.test_data_both_ways import check_data_job_run

from shoal._threads import available_cores

from .conftest import Federation

pytestmark = pytest.mark.slow


def test_data_and_filters_through_the_daemons(federation: Federation, tmp_path: Path) -> None:
    site_kit = federation.layout.site_kits["site-1"]
    (site_kit / "local").mkdir(exist_ok=True)
    # Re-read at each job start: no restart.
    (site_kit / "local" / "filters.yml").write_text(
        "task_in: [identity]\nresult_out: [{filter: identity}]\n"
    )
    s = federation.admin()
    job = write_data_job(tmp_path / "datajob", rounds=2)
    job_id = s.submit_job(job)
    meta = s.wait_for_job(job_id, timeout=180)
    assert meta["status"] == "FINISHED:COMPLETED", meta
    out = s.download_job(job_id, tmp_path / "dl")
    check_data_job_run(out / "run", rounds=2)
    # One worker per site daemon here: each may use every core, and says so
    # to OpenMP/BLAS/torch/TF (shoal._threads).
    lines = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {m["omp_threads"] for x in lines for m in x["sites"].values()} == {available_cores()}

    site1 = s.get_log(job_id, "site-1")
    assert site1.count("task_in filters ran on site-1") == 2, site1
    assert "task_in filters ran on site-1 (round 1): site:identity, job:probe:MarkTask" in site1
    assert (
        "result_out filters ran on site-1 (round 2): "
        "job:identity, job:probe:MarkResult, site:identity" in site1
    ), site1
    site2 = s.get_log(job_id, "site-2")
    assert "result_out filters ran on site-2 (round 1): job:identity, job:probe:MarkResult\n" in (
        site2
    ), site2


def test_a_broken_site_filters_file_stops_the_job_at_that_site(
    federation: Federation, tmp_path: Path
) -> None:
    site_kit = federation.layout.site_kits["site-2"]
    (site_kit / "local").mkdir(exist_ok=True)
    (site_kit / "local" / "filters.yml").write_text("result_out: [{filter: nosuch}]\n")
    s = federation.admin()
    job_id = s.submit_job(write_data_job(tmp_path / "datajob", rounds=1))
    meta = s.wait_for_job(job_id, timeout=180)
    # Rather than run without the filters the site asked for.
    assert meta["status"] != "FINISHED:COMPLETED", meta
    log = s.get_log(job_id, "site-2")
    assert "local/filters.yml" in log and "unknown filter 'nosuch'" in log, log
