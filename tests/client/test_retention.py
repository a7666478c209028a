"""The site's job-folder retention: pure logic on a temp folder, no daemon."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from shoal.client.retention import (
    RETENTION_FILE,
    RetentionPolicy,
    is_job_id,
    load_policy,
    sweep,
)
from shoal.errors import ConfigError
from shoal.provision.templates import local_files

DAY = 86400.0
NOW = 1_000_000_000.0


def _job(jobs: Path, *, age_days: float, files: int = 2) -> str:
    """A job folder whose every entry was last changed ``age_days`` before NOW."""
    job_id = str(uuid.uuid4())
    folder = jobs / job_id
    (folder / "job" / "app").mkdir(parents=True)
    (folder / "job" / "app" / "train.py").write_text("print('hi')\n")
    for i in range(files):
        (folder / f"f{i}.txt").write_text("x")
    _age(folder, age_days)
    return job_id


def _age(folder: Path, age_days: float) -> None:
    t = NOW - age_days * DAY
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            os.utime(Path(dirpath, name), (t, t), follow_symlinks=False)
    os.utime(folder, (t, t))


def test_old_finished_and_deleted_jobs_go_running_and_recent_ones_stay(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    old = _job(jobs, age_days=8)
    old_running = _job(jobs, age_days=30)
    recent = _job(jobs, age_days=1)
    deleted = _job(jobs, age_days=0)
    deleted_running = _job(jobs, age_days=0)
    policy = RetentionPolicy(keep_finished_days=7)

    removed = sweep(
        jobs,
        running={old_running, deleted_running},
        deleted={deleted, deleted_running},
        policy=policy,
        now=NOW,
    )

    assert sorted(removed) == sorted([old, deleted])
    assert sorted(p.name for p in jobs.iterdir()) == sorted([old_running, recent, deleted_running])


def test_a_recent_file_in_an_old_folder_keeps_it(tmp_path: Path) -> None:
    # The worker appends to log.txt until it exits: the folder's own mtime
    # alone (set when entries were added) would say the job ended long ago.
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    job = _job(jobs, age_days=30)
    log = jobs / job / "log.txt"
    log.write_text("still going\n")
    os.utime(log, (NOW - 60, NOW - 60))
    os.utime(jobs / job, (NOW - 30 * DAY, NOW - 30 * DAY))
    assert sweep(jobs, running=(), deleted=(), policy=RetentionPolicy(), now=NOW) == []
    assert (jobs / job).is_dir()


def test_policy_keeps_deleted_jobs_and_never_by_age_when_asked(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    old = _job(jobs, age_days=365)
    deleted = _job(jobs, age_days=0)
    keep = RetentionPolicy(keep_finished_days=None, keep_deleted=True)
    assert sweep(jobs, running=(), deleted={deleted}, policy=keep, now=NOW) == []
    assert {p.name for p in jobs.iterdir()} == {old, deleted}


def test_symlinks_out_of_the_jobs_dir_are_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    (outside / "sub").mkdir(parents=True)
    (outside / "data.bin").write_bytes(b"keep me")
    (outside / "sub" / "model.pt").write_bytes(b"keep me too")
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    job = _job(jobs, age_days=0)
    # Job code leaves links to a folder and to a file outside, and a link
    # named like a job id pointing outside.
    (jobs / job / "job" / "data").symlink_to(outside, target_is_directory=True)
    (jobs / job / "model.pt").symlink_to(outside / "data.bin")
    fake = str(uuid.uuid4())
    (jobs / fake).symlink_to(outside, target_is_directory=True)

    removed = sweep(jobs, running=(), deleted={job, fake}, policy=RetentionPolicy(), now=NOW)

    assert job in removed
    assert list(jobs.iterdir()) == []
    assert (outside / "data.bin").read_bytes() == b"keep me"
    assert (outside / "sub" / "model.pt").read_bytes() == b"keep me too"


def test_names_that_are_not_job_ids_are_left_alone(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    for name in ("notes", "..", "ABCDEF01-0000-4000-8000-000000000000", ".staging-x"):
        if name != "..":
            (jobs / name).mkdir()
            _age(jobs / name, 365)
    (jobs / "README").write_text("mine")
    removed = sweep(jobs, running=(), deleted={"notes", ".."}, policy=RetentionPolicy(), now=NOW)
    assert removed == []
    assert (tmp_path / "jobs" / "README").read_text() == "mine"
    assert sorted(p.name for p in jobs.iterdir()) == sorted(
        ["notes", "ABCDEF01-0000-4000-8000-000000000000", ".staging-x", "README"]
    )


def test_a_half_removed_folder_is_finished_by_the_next_sweep(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    job_id = str(uuid.uuid4())
    leftover = jobs / f".removing-{job_id}.abcd1234"
    (leftover / "job").mkdir(parents=True)
    assert sweep(jobs, running=(), deleted=(), policy=RetentionPolicy(), now=NOW) == [job_id]
    assert list(jobs.iterdir()) == []


def test_missing_jobs_dir_is_nothing_to_do(tmp_path: Path) -> None:
    assert sweep(tmp_path / "none", running=(), deleted=(), policy=RetentionPolicy(), now=NOW) == []


def test_is_job_id() -> None:
    assert is_job_id(str(uuid.uuid4()))
    for bad in ("", "..", "a/b", str(uuid.uuid4()).upper(), str(uuid.uuid4()) + "x", "x" * 36):
        assert not is_job_id(bad)


# -- the policy file --------------------------------------------------------------


def test_absent_file_means_the_defaults(tmp_path: Path) -> None:
    assert load_policy(tmp_path / RETENTION_FILE) == RetentionPolicy()


def test_provisioned_file_holds_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / RETENTION_FILE
    path.write_text(local_files("client")[RETENTION_FILE])
    assert load_policy(path) == RetentionPolicy()
    assert RETENTION_FILE not in local_files("server")


def test_file_values_are_read(tmp_path: Path) -> None:
    path = tmp_path / RETENTION_FILE
    path.write_text(
        json.dumps({"keep_finished_days": 0.5, "keep_deleted": True, "sweep_interval_s": 60})
    )
    assert load_policy(path) == RetentionPolicy(
        keep_finished_days=0.5, keep_deleted=True, sweep_interval_s=60
    )


@pytest.mark.parametrize(
    ("doc", "named"),
    [
        ({"keep_finished_days": -1}, "keep_finished_days"),
        ({"keep_finished_days": "7"}, "keep_finished_days"),
        ({"keep_finished_days": True}, "keep_finished_days"),
        ({"keep_deleted": "no"}, "keep_deleted"),
        ({"sweep_interval_s": 0}, "sweep_interval_s"),
        ({"keep_finshed_days": 1}, "keep_finshed_days"),
        ({"format": 2}, "format"),
        ([], "JSON object"),
    ],
)
def test_bad_file_is_refused_naming_the_field(tmp_path: Path, doc: object, named: str) -> None:
    path = tmp_path / RETENTION_FILE
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=named) as info:
        load_policy(path)
    assert str(path) in str(info.value)


def test_unreadable_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / RETENTION_FILE
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="JSON"):
        load_policy(path)
