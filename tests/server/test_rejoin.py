"""A site that leaves during a round and comes back while it is open answers it.

The race: a site's daemon restarts (or its session is cut and opened again)
while the other sites have answered already. The daemon tells the workflow
"site gone", then "site back" a moment later; the gather used to end on the
"gone" (every target answered or gone), before the "back" arrived, so the
returning site's answer to the round, which it takes from the board again,
was thrown away as late. The round now stays open ``rejoin_grace_s`` for a
site that left during it, and never ends on state older than the messages
already waiting.

The first test drives the real task board (``JobRun``) and the real
workflow-side communicator over a socketpair; the others are the gather's
pure logic over a scripted channel and a fake clock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.server.ipc import IpcChannel
from shoal.server.job_process import IpcCommunicator
from shoal.server.jobrun import JobRun

from .test_board import SITES, _answer, _task_of, board  # noqa: F401 - board is a fixture


def _comm_over(run: JobRun, workflow: IpcChannel, **kw: Any) -> IpcCommunicator:
    """The workflow side, its scatters read by the board as the daemon reads them."""
    threading.Thread(target=run._read_ipc, daemon=True).start()
    return IpcCommunicator(workflow, SITES, **kw)


def test_a_site_back_during_the_round_is_given_its_task_and_counted(
    board: tuple[JobRun, IpcChannel],  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    run, workflow = board
    comm = _comm_over(run, workflow, rejoin_grace_s=30.0)
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"w" * 10)
    task_id = comm.scatter(task="train", round=1, weights_path=weights, sites=SITES)
    for _ in range(100):  # the board reads the scatter on its own thread
        if _task_of(run, "site-3") == task_id:
            break
        threading.Event().wait(0.05)
    assert [_task_of(run, s) for s in SITES] == [task_id] * 3
    _answer(run, "site-1", task_id)
    _answer(run, "site-2", task_id)
    # site-3's daemon restarts mid-round: its session ends, a new one opens.
    run.site_failed("site-3", "disconnected", may_return=True)
    run.site_back("site-3")
    # Its new worker asks for work: the round's task, still open for it.
    assert _task_of(run, "site-3") == task_id
    _answer(run, "site-3", task_id)
    # Nothing more to give it once it answered (the task is sent once).
    assert _task_of(run, "site-3") is None

    # Every message is waiting before the gather reads one: result, result,
    # gone, back, result. Ending on "gone" (every target answered or gone)
    # threw site-3's answer away; it is counted now.
    got = [r.site for r in comm.gather(task_id, timeout=60)]
    assert got == ["site-1", "site-2", "site-3"]


class ScriptedChannel:
    """An IPC channel whose messages arrive at set times of a fake clock."""

    def __init__(self, script: list[tuple[float, dict[str, Any]]]) -> None:
        self.now = 0.0
        self.script = sorted(script, key=lambda item: item[0])
        self.sent: list[dict[str, Any]] = []

    def clock(self) -> float:
        return self.now

    def recv(self, timeout: float | None = None) -> dict[str, Any] | None:
        wait = 1e9 if timeout is None else timeout
        if self.script and self.script[0][0] <= self.now + wait:
            at, msg = self.script.pop(0)
            self.now = max(self.now, at)
            return msg
        self.now += wait
        return None

    def send(self, msg: dict[str, Any]) -> None:
        self.sent.append(msg)


def _result(site: str, task_id: str) -> dict[str, Any]:
    return {
        "op": "result",
        "task_id": task_id,
        "site": site,
        "round": 1,
        "num_examples": 1,
        "data_b64": "",
    }


def _gone(site: str) -> dict[str, Any]:
    return {"op": "site_gone", "site": site, "reason": "disconnected", "may_return": True}


def _back(site: str) -> dict[str, Any]:
    return {"op": "site_back", "site": site}


def _comm(ch: ScriptedChannel, sites: list[str], grace: float) -> IpcCommunicator:
    return IpcCommunicator(ch, sites, rejoin_grace_s=grace, clock=ch.clock)  # type: ignore[arg-type]


def _round(comm: IpcCommunicator, sites: list[str], timeout: float = 600.0) -> Iterator[str]:
    task_id = comm.scatter(task="train", round=1, weights_path=Path("w"), sites=sites)
    return (r.site for r in comm.gather(task_id, timeout=timeout))


def _task_ids(ch: ScriptedChannel) -> list[str]:
    return [m["task_id"] for m in ch.sent if m["op"] == "scatter"]


@pytest.mark.parametrize(("grace", "counted"), [(10.0, ["a", "b"]), (0.0, ["a"])])
def test_back_within_the_grace_keeps_the_round_open(grace: float, counted: list[str]) -> None:
    ch = ScriptedChannel([])
    comm = _comm(ch, ["a", "b"], grace)
    gather = _round(comm, ["a", "b"])
    (task,) = _task_ids(ch)
    # a answers at 1 s; b leaves at 2 s, is back at 5 s and answers at 8 s.
    ch.script = [(1, _result("a", task)), (2, _gone("b")), (5, _back("b")), (8, _result("b", task))]
    assert list(gather) == counted  # no grace: what the gather did before


def test_a_site_that_does_not_come_back_holds_the_round_for_the_grace_only() -> None:
    ch = ScriptedChannel([])
    comm = _comm(ch, ["a", "b"], 10.0)
    gather = _round(comm, ["a", "b"])
    (task,) = _task_ids(ch)
    ch.script = [(1, _result("a", task)), (2, _gone("b")), (30, _back("b"))]
    assert list(gather) == ["a"]
    assert ch.now == pytest.approx(12.0)  # left at 2 s, given 10 s; not the 600 s timeout


def test_a_site_gone_before_the_round_does_not_hold_it() -> None:
    ch = ScriptedChannel([])
    comm = _comm(ch, ["a", "b"], 10.0)
    first = _round(comm, ["a", "b"])
    (t1,) = _task_ids(ch)
    ch.script = [(1, _gone("b")), (2, _result("a", t1))]
    assert list(first) == ["a"]
    assert ch.now == pytest.approx(11.0)
    # Round 2: b is still gone when it starts (the daemon says so again).
    second = _round(comm, ["a", "b"])
    t2 = _task_ids(ch)[-1]
    ch.script = [(12, _gone("b")), (13, _result("a", t2))]
    assert list(second) == ["a"]
    assert ch.now == pytest.approx(13.0)  # no grace for a site that left before


def test_a_back_already_waiting_is_read_before_the_round_ends() -> None:
    ch = ScriptedChannel([])
    comm = _comm(ch, ["a", "b"], 0.0)
    first = _round(comm, ["a", "b"])
    (t1,) = _task_ids(ch)
    ch.script = [(1, _result("a", t1)), (2, _gone("b"))]
    assert list(first) == ["a"]
    # b came back between the rounds; round 2 asks b alone. The workflow still
    # holds b as gone: it must read the waiting "back" before it ends the round.
    second = _round(comm, ["b"])
    t2 = _task_ids(ch)[-1]
    ch.script = [(ch.now, _back("b")), (9, _result("b", t2))]
    assert list(second) == ["b"]


def test_the_stream_reads_a_waiting_back_before_it_ends() -> None:
    ch = ScriptedChannel([])
    comm = _comm(ch, ["a"], 0.0)
    comm.scatter(task="train", round=1, weights_path=Path("w"), sites=["a"], supersede="targets")
    ch.script = [(1, _gone("a"))]
    assert list(comm.stream(timeout=60)) == []  # the only site left: the stream ends
    comm.scatter(task="train", round=1, weights_path=Path("w"), sites=["a"], supersede="targets")
    task = _task_ids(ch)[-1]
    ch.script = [(ch.now, _back("a")), (5, _result("a", task))]
    assert [r.site for r in comm.stream(timeout=60)] == ["a"]


def test_a_failed_training_script_does_not_hold_the_round() -> None:
    ch = ScriptedChannel([])
    comm = _comm(ch, ["a", "b"], 10.0)
    gather = _round(comm, ["a", "b"])
    (task,) = _task_ids(ch)
    failed = {"op": "site_gone", "site": "b", "reason": "training script failed: exit code 1"}
    ch.script = [(1, _result("a", task)), (2, failed)]
    assert list(gather) == ["a"]
    assert ch.now == pytest.approx(2.0)  # nothing would say "back": no grace


def test_the_stream_waits_the_grace_for_the_last_site_to_come_back() -> None:
    ch = ScriptedChannel([])
    comm = _comm(ch, ["a"], 10.0)
    comm.scatter(task="train", round=1, weights_path=Path("w"), sites=["a"], supersede="targets")
    task = _task_ids(ch)[-1]
    # a's daemon restarts: gone at 1 s, back at 4 s, answers its open task at 6 s.
    ch.script = [(1, _gone("a")), (4, _back("a")), (6, _result("a", task))]
    assert [r.site for r in comm.stream(timeout=60)] == ["a"]
    # Gone for good: the stream ends once the grace is over, not at its timeout.
    comm.scatter(task="train", round=2, weights_path=Path("w"), sites=["a"], supersede="targets")
    ch.script = [(7, _gone("a"))]
    assert list(comm.stream(timeout=600)) == []
    assert ch.now == pytest.approx(17.0)
