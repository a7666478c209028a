"""``shoal job check``: exit codes, a one-line OK, every problem one per line."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.cli.app import main

from .conftest import make_job
from .test_check import BROKEN_PROBLEMS, BROKEN_YML


def test_a_clean_job_exits_0_with_one_line(
    job_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["job", "check", str(job_dir)]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 1 and out.startswith(f"{job_dir}: OK: job 'hello-tf2', fedavg")
    assert err == ""


def test_a_broken_job_exits_1_listing_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = make_job(tmp_path / "broken", BROKEN_YML)
    assert main(["job", "check", str(job)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == BROKEN_PROBLEMS
    assert err == f"{job}: 7 problem(s); the job would be refused\n"


def test_sites_option_checks_against_the_project(
    job_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["job", "check", str(job_dir), "--sites", "site-1, site-2"]) == 0
    assert main(["job", "check", str(job_dir), "--sites", "site-1"]) == 1
    out = capsys.readouterr().out
    assert "job.yml: sites: site-2 not in the project (project sites: site-1)" in out


def test_a_missing_job_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["job", "check", str(tmp_path / "nope")]) == 1
    assert "no such job folder or archive" in capsys.readouterr().out


def test_job_without_an_action_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["job"])
    assert info.value.code == 2
    assert "new" in capsys.readouterr().err
