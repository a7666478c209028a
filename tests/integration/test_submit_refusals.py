"""submit_job refuses bad jobs with a reason and stores nothing.

One POC federation (server1, site-1, site-2) serves every case: each submits
something wrong and checks the reason, that ``list_jobs`` did not change and
that no folder (not even a staging one) was left under the server's ``jobs/``.
A good job submitted last shows the server still accepts jobs.
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shoal import jobstatus, poc
from shoal.admin.session import AdminSession
from shoal.errors import JobValidationError
from shoal.jobs import MAX_ARCHIVE_BYTES, pack_job

from .conftest import HELLO_NUMPY

pytestmark = [
    pytest.mark.slow,
]


class Fed:
    def __init__(self, workspace: Path, layout: poc.PocLayout, session: AdminSession) -> None:
        self.workspace = workspace
        self.layout = layout
        self.s = session

    @property
    def jobs_dir(self) -> Path:
        return self.layout.server_kit / "jobs"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    ws = tmp_path_factory.mktemp("poc")
    poc.prepare(ws, num_sites=2)
    layout = poc.start(ws)
    try:
        with poc.admin_session(ws) as s:
            yield Fed(ws, layout, s)
    finally:
        poc.stop(ws)


def good_job(root: Path, name: str = "good") -> Path:
    job = root / name
    shutil.copytree(HELLO_NUMPY, job, ignore=shutil.ignore_patterns("__pycache__"))
    text = (job / "job.yml").read_text().replace("num_rounds: 5", "num_rounds: 1")
    (job / "job.yml").write_text(text)
    return job


def edit_yml(job: Path, old: str, new: str) -> Path:
    text = (job / "job.yml").read_text()
    assert old in text
    (job / "job.yml").write_text(text.replace(old, new))
    return job


def hostile_zip(root: Path, extra: Callable[[zipfile.ZipFile], None]) -> Path:
    """A valid job archive plus whatever ``extra`` writes into it."""
    good = pack_job(good_job(root / "src"), root / "good.zip")
    out = root / "hostile.zip"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        extra(dst)
    return out


def _entry(name: str, data: bytes = b"print('pwned')\n", mode: int = 0o644) -> Callable:
    def write(zf: zipfile.ZipFile) -> None:
        info = zipfile.ZipInfo("placeholder")
        info.filename = name  # bypass ZipInfo's own clean-up: the archive is hostile
        info.external_attr = mode << 16
        zf.writestr(info, data)

    return write


# -- cases: (build the thing to submit, part of the reason expected) ---------------


def case_no_job_yml(root: Path) -> Path:
    job = good_job(root)
    (job / "job.yml").unlink()
    return job


def case_zip_without_job_yml(root: Path) -> Path:
    # Checked by the server (a folder without job.yml is refused before upload).
    good = pack_job(good_job(root / "src"), root / "good.zip")
    out = root / "no-yml.zip"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename != "job.yml":
                dst.writestr(info, src.read(info))
    return out


def case_unknown_workflow(root: Path) -> Path:
    return edit_yml(good_job(root), "name: fedavg", "name: fedsgd")


def case_min_clients_above_project(root: Path) -> Path:
    return edit_yml(good_job(root), "min_clients: 1", "min_clients: 3")


def case_unknown_site(root: Path) -> Path:
    return edit_yml(good_job(root), "min_clients: 1", "min_clients: 1\nsites: [site-1, site-9]")


def case_dotdot_entry(root: Path) -> Path:
    return hostile_zip(root, _entry("app/../../evil.py"))


def case_parent_entry(root: Path) -> Path:
    return hostile_zip(root, _entry("../evil.py"))


def case_absolute_entry(root: Path) -> Path:
    return hostile_zip(root, _entry("/tmp/shoal-evil.py"))


def case_symlink_entry(root: Path) -> Path:
    return hostile_zip(root, _entry("app/passwd", b"/etc/passwd", mode=stat.S_IFLNK | 0o777))


def case_symlink_out_of_job(root: Path) -> Path:
    job = good_job(root)
    (job / "app" / "secrets").symlink_to(Path("/etc"))
    return job


def case_not_a_zip(root: Path) -> Path:
    path = root / "job.zip"
    path.write_text("this is not a zip archive\n")
    return path


def case_archive_over_cap(root: Path) -> Path:
    # A real job archive after MAX_ARCHIVE_BYTES of leading zeros: a valid zip
    # (readers find it from its end) that is one byte too big. The zeros are a
    # hole in a sparse file, so it costs no disk space.
    good = pack_job(good_job(root / "src"), root / "good.zip")
    data = good.read_bytes()
    path = root / "huge.zip"
    with open(path, "wb") as f:
        f.seek(MAX_ARCHIVE_BYTES + 1 - len(data))
        f.write(data)
    assert path.stat().st_size == MAX_ARCHIVE_BYTES + 1
    assert zipfile.is_zipfile(path)
    return path


CASES = {
    "no job.yml": (case_no_job_yml, "job.yml"),
    "archive without job.yml": (case_zip_without_job_yml, "job.yml"),
    "unknown workflow": (case_unknown_workflow, "unknown workflow 'fedsgd'"),
    "min_clients above the project": (case_min_clients_above_project, "min_clients"),
    "site not in the project": (case_unknown_site, "site-9 not in the project"),
    "entry with ..": (case_dotdot_entry, ".."),
    "entry starting with ../": (case_parent_entry, ".."),
    "absolute entry": (case_absolute_entry, "absolute"),
    "symlink entry in the archive": (case_symlink_entry, "link"),
    "symlink out of the job folder": (case_symlink_out_of_job, "outside the job"),
    "not a zip": (case_not_a_zip, "zip"),
    "archive over the size cap": (case_archive_over_cap, f"more than the {MAX_ARCHIVE_BYTES}-byte"),
}


def _jobs_dir_entries(fed: Fed) -> list[str]:
    return sorted(p.name for p in fed.jobs_dir.iterdir())


@pytest.mark.parametrize("case", list(CASES))
def test_refused_and_nothing_stored(fed: Fed, tmp_path: Path, case: str) -> None:
    build, reason = CASES[case]
    source = build(tmp_path)
    jobs_before = fed.s.list_jobs()
    entries_before = _jobs_dir_entries(fed)

    with pytest.raises(JobValidationError) as err:
        fed.s.submit_job(source)
    assert reason in str(err.value), f"{case}: reason {str(err.value)!r} lacks {reason!r}"

    assert fed.s.list_jobs() == jobs_before
    assert _jobs_dir_entries(fed) == entries_before
    assert not Path("/tmp/shoal-evil.py").exists()
    assert not (fed.layout.server_kit / "evil.py").exists()


def test_a_good_job_is_still_accepted(fed: Fed, tmp_path: Path) -> None:
    job_id = fed.s.submit_job(good_job(tmp_path))
    assert fed.s.wait_for_job(job_id, timeout=180)["status"] == jobstatus.COMPLETED
    assert _jobs_dir_entries(fed) == sorted(j["job_id"] for j in fed.s.list_jobs())
    assert os.path.isdir(fed.jobs_dir / job_id)
