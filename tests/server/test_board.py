"""The task board of a running job (``JobRun``): one open task per site.

``supersede="all"`` (rounds, FedAvg) closes every site's task when a new
task is scattered; ``supersede="targets"`` (asynchronous workflows, FedBuff)
replaces only the targeted sites' tasks, and the others' results are still
taken. Driven through the board's own entry points, as the Fleet service
drives it (``tests/server/test_fleet_aio.py`` does it over mutual TLS)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.errors import PeerRejectedError
from shoal.server.ipc import IpcChannel
from shoal.server.jobrun import _STOP_SENDING, DONE, JobRun, Task
from shoal.server.store import JobRecord
from shoal.transport import PayloadHeader
from shoal.transport.frames import WireFrame, frames_from_bytes, read_header

SITES = ["site-1", "site-2", "site-3"]


@pytest.fixture
def board(tmp_path: Path) -> Iterator[tuple[JobRun, IpcChannel]]:
    folder = tmp_path / "job"
    (folder / "run").mkdir(parents=True)
    record = JobRecord(
        job_id="job-1",
        name="t",
        status="RUNNING",
        submit_time="2024-01-01T00:00:00+00:00",
        start_time=None,
        end_time=None,
        submitter="admin@nvidia.com",
        submitter_org="nvidia",
        spec={},
        sites=SITES,
        current_round=None,
        num_rounds=None,
        error=None,
        attempts=1,
        package_sha256="",
        package_size=0,
        folder=folder,
    )
    run = JobRun(record, sites=SITES, on_end=lambda *a: None)
    ours, theirs = socket.socketpair()
    run.ipc = IpcChannel(ours)
    threading.Thread(target=run._write_ipc, daemon=True).start()
    workflow = IpcChannel(theirs)
    yield run, workflow
    run._outbox.put(_STOP_SENDING)
    workflow.close()
    run.ipc.close()


def _scatter(run: JobRun, tmp: Path, task_id: str, sites: list[str], **extra: Any) -> None:
    weights = tmp / f"{task_id}.bin"
    weights.write_bytes(task_id.encode())
    run._handle(
        {
            "op": "scatter",
            "task_id": task_id,
            "task": "train",
            "round": 1,
            "weights_path": str(weights),
            "sites": sites,
            "meta": {},
            **extra,
        }
    )


def _task_of(run: JobRun, site: str) -> str | None:
    task = run.take_task(site)
    assert task is not DONE
    return task.task_id if isinstance(task, Task) else None


def _answer(run: JobRun, site: str, task_id: str) -> dict[str, Any]:
    header = PayloadHeader("result", "job-1", task_id, meta={"num_examples": 1})
    frames = frames_from_bytes(header, b"r" * 10)
    first = read_header(frames)

    async def rest() -> AsyncIterator[WireFrame]:
        for frame in frames:
            yield frame

    return asyncio.run(run.accept_result(site, first, rest(), 1 << 20))


def test_targets_replace_only_their_own_tasks(
    board: tuple[JobRun, IpcChannel], tmp_path: Path
) -> None:
    run, workflow = board
    _scatter(run, tmp_path, "t1", SITES, supersede="targets")
    assert [_task_of(run, s) for s in SITES] == ["t1", "t1", "t1"]
    _answer(run, "site-1", "t1")
    assert _task_of(run, "site-1") is None  # answered: nothing until the workflow says
    # site-1 moves on; site-2 and site-3 still hold t1.
    _scatter(run, tmp_path, "t2", ["site-1"], supersede="targets")
    assert [_task_of(run, s) for s in SITES] == ["t2", "t1", "t1"]
    _answer(run, "site-2", "t1")  # accepted: t1 is still open for site-2
    with pytest.raises(PeerRejectedError, match="superseded for site-1"):
        _answer(run, "site-1", "t1")
    # site-3's task is replaced before it answered: its t1 result is refused.
    _scatter(run, tmp_path, "t3", ["site-3"], supersede="targets")
    with pytest.raises(PeerRejectedError, match="superseded"):
        _answer(run, "site-3", "t1")
    _answer(run, "site-1", "t2")
    with pytest.raises(PeerRejectedError, match="duplicate"):
        _answer(run, "site-1", "t2")
    _answer(run, "site-3", "t3")
    got = [workflow.recv(timeout=5) for _ in range(4)]
    assert [(m["site"], m["task_id"]) for m in got if m] == [
        ("site-1", "t1"),
        ("site-2", "t1"),
        ("site-1", "t2"),
        ("site-3", "t3"),
    ]
    # The board forgets a task once no site holds it any more.
    assert set(run._tasks) == {"t1", "t2", "t3"}
    _scatter(run, tmp_path, "t4", ["site-2"], supersede="targets")
    assert set(run._tasks) == {"t2", "t3", "t4"}


def test_supersede_all_is_a_new_round_for_everyone(
    board: tuple[JobRun, IpcChannel], tmp_path: Path
) -> None:
    run, _ = board
    _scatter(run, tmp_path, "t1", SITES, supersede="targets")
    # A round-style scatter (no "supersede" key: what FedAvg sends) closes
    # every open task, including those of sites it does not target.
    _scatter(run, tmp_path, "r1", ["site-1", "site-2"])
    assert [_task_of(run, s) for s in SITES] == ["r1", "r1", None]
    for site in SITES:
        with pytest.raises(PeerRejectedError, match="superseded"):
            _answer(run, site, "t1")
    _answer(run, "site-1", "r1")
    with pytest.raises(PeerRejectedError, match="not given to site-3"):
        _answer(run, "site-3", "r1")
    _scatter(run, tmp_path, "r2", ["site-2"])
    with pytest.raises(PeerRejectedError, match="superseded"):
        _answer(run, "site-2", "r1")
    assert set(run._tasks) == {"r2"}
