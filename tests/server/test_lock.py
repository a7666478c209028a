"""One server per job store (issue 19, item 2): the lock fails loud, naming its
holder; the database and the job CA can live apart from the workspace; a new
database beside existing job folders is refused rather than swept."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from shoal import poc
from shoal.errors import ConfigError
from shoal.provision import load_kit
from shoal.server.daemon import ServerDaemon, ServerOptions
from shoal.server.lock import LOCK_FILE, ServerLock, StoreLockedError
from shoal.server.store import JobStore

HOLD = (
    "import sys; from pathlib import Path; from shoal.server.lock import ServerLock\n"
    "lock = ServerLock.acquire(Path(sys.argv[1])); print('held', flush=True); sys.stdin.read()\n"
)


def test_second_holder_is_refused_by_name_and_freed_on_exit(tmp_path: Path) -> None:
    path = tmp_path / "state" / LOCK_FILE
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(StoreLockedError) as err:
            ServerLock.acquire(path)
        message = str(err.value)
        assert f"pid {holder.pid}" in message
        assert socket.gethostname() in message
    finally:
        holder.communicate("", timeout=30)
    # The kernel dropped the lock with the process: nothing stale to clean up.
    ServerLock.acquire(path).release()


def test_lock_in_one_process_twice_is_refused(tmp_path: Path) -> None:
    first = ServerLock.acquire(tmp_path / LOCK_FILE)
    try:
        with pytest.raises(StoreLockedError):
            ServerLock.acquire(tmp_path / LOCK_FILE)
    finally:
        first.release()
    ServerLock.acquire(tmp_path / LOCK_FILE).release()


def _daemon(layout: poc.PocLayout, workspace: Path, state: Path | None) -> ServerDaemon:
    return ServerDaemon(
        load_kit(layout.server_kit, expected_type="server"),
        ServerOptions(
            host="127.0.0.1",
            fed_port=0,
            admin_port=0,
            health_port=-1,
            workspace=workspace,
            state_dir=state,
        ),
    )


def test_state_dir_holds_database_ca_and_lock(tmp_path: Path) -> None:
    layout = poc.prepare(tmp_path / "poc", num_sites=1)
    workspace, state = tmp_path / "bucket", tmp_path / "disk"
    first = _daemon(layout, workspace, state)
    first.start()
    try:
        assert (state / "store.db").is_file() and (state / "jobca").is_dir()
        assert (state / LOCK_FILE).is_file()
        assert not (workspace / "store.db").exists() and not (workspace / "jobca").exists()
        assert (workspace / "jobs").is_dir()
        # A second daemon on the same store: refused at start, before touching it.
        second = _daemon(layout, tmp_path / "other-ws", state)
        with pytest.raises(StoreLockedError, match="another shoal server holds this job store"):
            second.start()
    finally:
        first.stop("test over")
    again = _daemon(layout, workspace, state)
    again.start()
    again.stop("test over")


def test_new_database_beside_job_folders_is_refused(tmp_path: Path) -> None:
    workspace = tmp_path / "bucket"
    store = JobStore(workspace, state_dir=tmp_path / "disk")
    job = store.staging_folder()
    (job / "job.zip").write_bytes(b"zip")
    store.close()
    # The state volume was not mounted (or --state-dir changed): a fresh database
    # would sweep the job folder as an orphan. Refused, and the folder kept.
    with pytest.raises(ConfigError, match="no job database"):
        JobStore(workspace, state_dir=tmp_path / "empty-disk")
    assert (job / "job.zip").is_file()
    assert not (tmp_path / "empty-disk" / "store.db").exists()
    # Non-job names do not count.
    (tmp_path / "ws2" / "jobs" / "README").mkdir(parents=True)
    JobStore(tmp_path / "ws2").close()
    assert uuid.UUID(job.name)
