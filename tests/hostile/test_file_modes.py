"""Finding 9: what the daemons create is private to their user, whatever umask
started them.

Before the fix, under a normal umask (022), job folders, job packages, the
server's SQLite store (with its -wal and -shm) and every log were readable by
every local user. Here a real POC federation (the server and a site from real
kits, started by ``shoal.poc`` as ``shoal poc start`` does) runs a job under
umask 022, and every file and folder it created must have no group or other
permission at all.

Not checked, and readable by design: what ``shoal provision`` wrote before the
daemons started (certificates, configs, start scripts; keys are 0600).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults.harness import write_job  # noqa: I001

from shoal import poc

pytestmark = pytest.mark.slow


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _tree(root: Path) -> set[Path]:
    return {root, *root.rglob("*")}


def test_daemons_create_private_files_under_umask_022(umask_022: None, tmp_path: Path) -> None:
    layout = poc.prepare(tmp_path / "ws", num_sites=1)
    provisioned = _tree(layout.workspace)
    try:
        poc.start(layout.workspace, timeout=120)
        with poc.admin_session(layout.workspace, timeout=60) as admin:
            job_id = admin.submit_job(write_job(tmp_path / "job", num_rounds=1))
            assert admin.wait_for_job(job_id, timeout=120)["status"] == "FINISHED:COMPLETED"
            assert "round" in admin.get_log(job_id, "site-1")  # the site's log is uploaded
            created = sorted(_tree(layout.workspace) - provisioned)
            # While the server runs, so its SQLite -wal and -shm exist.
            loose = [
                f"{oct(p.lstat().st_mode & 0o777)} {p.relative_to(layout.workspace)}"
                for p in created
                if not stat.S_ISLNK(p.lstat().st_mode) and p.lstat().st_mode & 0o077
            ]
    finally:
        poc.stop(layout.workspace)
    assert loose == []

    server, site = layout.server_kit, layout.site_kits["site-1"]
    expected = [
        server / "store.db",
        server / "store.db-wal",
        server / "store.db-shm",
        server / "log.txt",
        server / "jobs",
        server / "jobs" / job_id / "job.zip",
        server / "jobs" / job_id / "logs" / "server.log",
        server / "jobs" / job_id / "logs" / "site-1.log",
        server / "jobs" / job_id / "run",
        site / "log.txt",
        site / "jobs" / job_id / "log.txt",
        site / "jobs" / job_id / "job.zip",
        layout.run_dir / "logs" / "server1.out",
        layout.run_dir / "pids",
    ]
    assert [p for p in expected if p not in created] == []


def test_job_store_and_daemon_log_are_private_in_process(umask_022: None, tmp_path: Path) -> None:
    """A library user starting ServerDaemon in their own process keeps their
    umask (022 here); the job store and a daemon's log are private anyway,
    including files left readable by an older version."""
    from shoal.cli._daemon import install_file_log
    from shoal.server.store import JobStore

    (tmp_path / "jobs").mkdir(mode=0o755)
    (tmp_path / "log.txt").write_text("from before\n")
    os.chmod(tmp_path / "log.txt", 0o644)
    store = JobStore(tmp_path)
    try:
        staging = store.staging_folder()
        (staging / "job").mkdir()
        store.create(
            name="j", spec={}, staged_folder=staging, submitter="a", submitter_org="o",
            package_sha256="", package_size=0, num_rounds=None,
        )  # fmt: skip
        modes = {
            name: (tmp_path / name).stat().st_mode & 0o777
            for name in ("store.db", "store.db-wal", "store.db-shm", "jobs")
        }
        modes.update({p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "jobs").iterdir()})
    finally:
        store.close()
    assert modes.pop("jobs") == 0o700
    assert set(modes.values()) <= {0o600, 0o700} and len(modes) == 4, modes

    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        install_file_log(tmp_path / "log.txt")
        install_file_log(tmp_path / "new" / "log.txt")
    finally:
        for handler in set(root.handlers) - set(before):
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)
    assert (tmp_path / "log.txt").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "new" / "log.txt").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700
