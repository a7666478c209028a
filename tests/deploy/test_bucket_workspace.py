"""Workspaces on a mount with Cloud Storage FUSE's folder rules (issue 19, item 1).

``bucketfs.py`` is a real FUSE file system that refuses, as gcsfuse does by
default, to rename a non-empty folder (EMFILE) or make a hard link. On it:
the archive extraction the server and the sites use, and a whole federation
(server workspace on the mount, its database on a plain disk, both sites'
workspaces on the mount) running a real job to FINISHED:COMPLETED, then
deleting it, which makes the sites remove their job folders.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal import jobstatus, poc
from shoal.admin.session import AdminSession
from shoal.jobs import pack_job, safe_extract

ROOT = Path(__file__).resolve().parents[2]
BUCKETFS = Path(__file__).with_name("bucketfs.py")
HELLO_NUMPY = ROOT / "examples" / "hello-numpy"
FUSERMOUNT = shutil.which("fusermount3") or shutil.which("fusermount")


def _why_no_fuse() -> str | None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "mounting FUSE needs root here"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if FUSERMOUNT is None:
        return "no fusermount3 (Debian: fuse3)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:  # OSError: the binding found no libfuse
        return f"mfusepy unusable: {exc}"
    return None


pytestmark = pytest.mark.skipif(_why_no_fuse() is not None, reason=_why_no_fuse() or "")


class Bucket:
    def __init__(self, root: Path) -> None:
        self.backing = root / "objects"
        self.mount = root / "mnt"
        self.refused_log = root / "refused.log"

    def refused(self) -> list[str]:
        try:
            return self.refused_log.read_text().splitlines()
        except FileNotFoundError:
            return []


@pytest.fixture
def bucket(tmp_path: Path) -> Iterator[Bucket]:
    b = Bucket(tmp_path / "bucket")
    b.backing.mkdir(parents=True)
    b.mount.mkdir()
    log = (tmp_path / "bucketfs.out").open("wb")
    proc = subprocess.Popen(
        [sys.executable, str(BUCKETFS), str(b.backing), str(b.mount)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(b.mount):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"bucketfs did not mount: {(tmp_path / 'bucketfs.out').read_text()}")
            time.sleep(0.05)
        # The mount is reachable by the job processes' own uids, like gcsfuse's allow_other.
        b.mount.chmod(0o755)
        yield b
    finally:
        assert FUSERMOUNT
        subprocess.run([FUSERMOUNT, "-u", "-z", str(b.mount)], check=False)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_the_mount_has_the_bucket_rules(bucket: Bucket) -> None:
    full = bucket.mount / "full"
    (full / "sub").mkdir(parents=True)
    (full / "sub" / "f").write_text("x")
    with pytest.raises(OSError) as err:
        os.rename(full, bucket.mount / "moved")
    assert err.value.errno == errno.EMFILE
    with pytest.raises(OSError):
        os.link(full / "sub" / "f", bucket.mount / "hard")
    (bucket.mount / "empty").mkdir()
    os.rename(bucket.mount / "empty", bucket.mount / "empty2")  # an empty folder may move
    os.replace(full / "sub" / "f", full / "g")  # files rename
    assert (bucket.backing / "full" / "g").read_text() == "x"
    assert [line.split()[0] for line in bucket.refused()] == ["rename", "link"]


def test_job_archive_extracts_on_the_mount(bucket: Bucket, tmp_path: Path) -> None:
    archive = pack_job(HELLO_NUMPY, tmp_path / "job.zip")
    stats = safe_extract(archive, bucket.mount / "jobs" / "j1" / "job")
    assert stats.files > 0
    assert (bucket.backing / "jobs" / "j1" / "job" / "job.yml").is_file()
    assert bucket.refused() == []


def _two_site_job(root: Path) -> Path:
    job = root / "hello-numpy"
    shutil.copytree(HELLO_NUMPY, job, ignore=shutil.ignore_patterns("__pycache__"))
    spec = job / "job.yml"
    spec.write_text(spec.read_text().replace("min_clients: 1", "min_clients: 2"))
    return job


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "shoal", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait(cond: object, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def test_a_federation_runs_and_deletes_a_job_on_the_mount(bucket: Bucket, tmp_path: Path) -> None:
    layout = poc.prepare(tmp_path / "poc", num_sites=2)
    for kit in layout.site_kits.values():
        # Sweep soon after a delete, so the test sees the folder go.
        (kit / "local" / "retention.json").write_text(
            '{"format": 1, "keep_deleted": false, "sweep_interval_s": 1}'
        )
    server_ws = bucket.mount / "server1"
    state = tmp_path / "disk" / "server1"  # the database on a plain disk, as in --bucket mode
    procs = [
        _start(
            [
                "server",
                "--kit",
                str(layout.server_kit),
                "--host",
                "127.0.0.1",
                "--fed-port",
                str(layout.fed_port),
                "--admin-port",
                str(layout.admin_port),
                "--health-port",
                "-1",
                "--workspace",
                str(server_ws),
                "--state-dir",
                str(state),
            ],
            tmp_path / "server.out",
        )
    ]
    for name, kit in layout.site_kits.items():
        procs.append(
            _start(
                [
                    "client",
                    "--kit",
                    str(kit),
                    "--server",
                    layout.fed_address,
                    "--workspace",
                    str(bucket.mount / name),
                ],
                tmp_path / f"{name}.out",
            )
        )
    try:
        _wait(lambda: (server_ws / "server_ready.json").exists(), "the server")
        with AdminSession.from_kit(
            layout.admin_kit, server_address=f"127.0.0.1:{layout.admin_port}"
        ) as admin:
            _wait(lambda: len(admin.check_status().connected) == 2, "both sites")
            job_id = admin.submit_job(_two_site_job(tmp_path))
            meta = admin.wait_for_job(job_id, timeout=240)
            assert meta["status"] == jobstatus.COMPLETED, meta
            server_job = bucket.backing / "server1" / "jobs" / job_id
            assert (server_job / "job.zip").is_file() and (server_job / "job" / "job.yml").is_file()
            assert list((server_job / "run").rglob("*.safetensors")), "no model on the bucket"
            site_jobs = [bucket.backing / name / "jobs" / job_id for name in layout.site_kits]
            for folder in site_jobs:
                assert (folder / "job" / "job.yml").is_file(), folder
            assert (state / "store.db").is_file()
            assert not (bucket.backing / "server1" / "store.db").exists()

            admin.delete_job(job_id)
            assert not server_job.exists()
            _wait(lambda: not any(f.exists() for f in site_jobs), "the sites' folders to go")
        # The rules were met (the sites' sweep tried a rename first), and nothing failed.
        refused = bucket.refused()
        assert refused and all(line.startswith("rename ") for line in refused), refused
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    logs = "".join((tmp_path / f"{n}.out").read_text() for n in ("server", *layout.site_kits))
    assert "Traceback" not in logs, logs
