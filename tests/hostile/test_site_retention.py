"""Deleted and old jobs do not stay on sites (finding 6 of the red-team pass).

Before the fix ``delete_job`` removed the server's copy only: every site kept
``<workspace>/jobs/<job_id>/`` (the job's code, what it read and wrote, its
models) forever. Now the server tells the sites that ran a deleted job to
forget it, and each site sweeps finished jobs by the age rule of its
``local/retention.json``, at start and periodically. The job code here plants
links to a folder outside the site's workspace: removing the job folder must
drop the links, never what they point to.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from faults.harness import Fed, wait_for, write_job

from shoal.client.retention import RETENTION_FILE

pytestmark = pytest.mark.slow

#: Runs at the start of the job's train.py: links from the job's folder to
#: ``precious`` beside the test's gate folder (the site daemon passes FAULT_GATE on).
PLANT = """
def plant():
    precious = Path(os.environ["FAULT_GATE"]).parent / "precious"
    Path("precious_dir").symlink_to(precious, target_is_directory=True)
    Path("precious_file").symlink_to(precious / "data.bin")
    Path("model.out").write_bytes(b"weights the site trained")

"""


def _job(folder: Path, name: str) -> Path:
    write_job(folder, name=name, size=100, num_rounds=1, min_clients=1, round_timeout_s=60)
    train = folder / "app" / "train.py"
    text = train.read_text().replace("\ndef main():", PLANT + "\ndef main():")
    train.write_text(text.replace("    fl.init()\n", "    fl.init()\n    plant()\n", 1))
    return folder


def _retention(fed: Fed, site: str, **doc: object) -> None:
    (fed.kits[site] / "local" / RETENTION_FILE).write_text(json.dumps(doc))


def _run(fed: Fed, admin, folder: Path) -> str:  # type: ignore[no-untyped-def]
    job_id = admin.submit_job(folder)
    meta = admin.wait_for_job(job_id, timeout=120)
    assert meta["status"] == "FINISHED:COMPLETED", (meta, fed.tail("site-1"))
    return job_id


def test_deleted_and_expired_jobs_are_removed_from_the_site(fed_factory, tmp_path: Path):
    fed = fed_factory(sites=("site-1",))
    precious = fed.root / "precious"
    precious.mkdir()
    (precious / "data.bin").write_bytes(b"the site's own data")
    site_jobs = fed.kits["site-1"] / "jobs"
    # No age rule: only the server's word can remove a folder in this part.
    _retention(fed, "site-1", keep_finished_days=None, sweep_interval_s=3600)
    admin = fed.start_all(sites=["site-1"])

    deleted = _run(fed, admin, _job(tmp_path / "a", "deleted"))
    kept = _run(fed, admin, _job(tmp_path / "b", "kept"))
    for job_id in (deleted, kept):
        assert (site_jobs / job_id / "log.txt").is_file()
        assert list((site_jobs / job_id).rglob("precious_dir"))

    admin.delete_job(deleted)
    wait_for(lambda: not (site_jobs / deleted).exists(), 30, "the deleted job's site folder to go")
    assert (site_jobs / kept).is_dir(), "only the deleted job's folder goes"
    assert (precious / "data.bin").read_bytes() == b"the site's own data"
    assert "deleted on the server" in fed.tail("site-1", 200)

    # A site that was down when a job was deleted never hears of it: the age
    # rule catches it at the next start. Make `kept` old and restart the site
    # with a retention of a few seconds and a short sweep period.
    fed.kill("site-1", signal.SIGTERM)
    (site_jobs / "not-a-job").mkdir()
    old = 1_000_000_000.0
    for entry in [site_jobs / kept, *(site_jobs / kept).iterdir()]:
        os.utime(entry, (old, old), follow_symlinks=False)
    _retention(fed, "site-1", keep_finished_days=0.00005, sweep_interval_s=0.5)
    fed.start_site("site-1")
    wait_for(lambda: not (site_jobs / kept).exists(), 30, "the expired job's folder to go at start")
    fed.wait_connected(admin, ["site-1"])

    # And a job that finishes while the site runs goes once it is ~4 s old.
    later = _run(fed, admin, _job(tmp_path / "c", "later"))
    wait_for(lambda: not (site_jobs / later).exists(), 60, "the periodic sweep to remove it")

    assert (precious / "data.bin").read_bytes() == b"the site's own data"
    assert (site_jobs / "not-a-job").is_dir(), "names that are not job ids are left alone"
    # The server still has the jobs it did not delete.
    assert {j["job_id"] for j in admin.list_jobs()} == {kept, later}
