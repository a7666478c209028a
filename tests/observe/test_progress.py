"""The round progress bar: what a terminal and what a log get, and the wait
commands driving it from the job's stats."""

from __future__ import annotations

import io
from typing import Any

from shoal.admin.commands import run_command
from shoal.admin.results import JobMeta, JobStats
from shoal.errors import NotAuthorizedError
from shoal.observe.progress import RoundBar, bar, latest_metrics, progress_line


def test_bar_and_line() -> None:
    assert bar(0, 4, width=8) == "[--------]"
    assert bar(2, 4, width=8) == "[####----]"
    assert bar(4, 4, width=8) == "[########]"
    assert bar(9, 4, width=8) == "[########]"
    line = progress_line(
        round=3, total=5, metrics={"accuracy": 0.91234, "loss": 0.25}, label="global", width=10
    )
    assert line == "round 3/5 [######----]  60% global accuracy=0.9123 loss=0.25"
    assert progress_line(round=None, total=None, status="SUBMITTED") == "(SUBMITTED)"


def test_latest_metrics_prefers_the_global_model() -> None:
    rows = [
        {"round": 1, "server": {"acc": 0.5}, "aggregated": {"loss": 1.0}},
        {"round": 2, "server": {}, "aggregated": {"loss": 0.5, "flag": True}},
    ]
    assert latest_metrics(rows) == ("mean", {"loss": 0.5})
    assert latest_metrics(rows[:1]) == ("global", {"acc": 0.5})
    assert latest_metrics([]) == ("", {})


def test_a_log_gets_one_plain_line_per_round() -> None:
    out = io.StringIO()
    b = RoundBar(out, tty=False, width=4)
    for rnd, status in ((1, "RUNNING"), (1, "RUNNING"), (2, "RUNNING"), (2, "FINISHED:COMPLETED")):
        b.update(round=rnd, total=2, metrics={"acc": rnd / 2}, status=status)
    b.close()
    assert out.getvalue().splitlines() == [
        "round 1/2 [##--]  50% acc=0.5 (RUNNING)",
        "round 2/2 [####] 100% acc=1 (RUNNING)",
        "round 2/2 [####] 100% acc=1 (FINISHED:COMPLETED)",
    ]
    assert "\x1b" not in out.getvalue()


def test_a_terminal_gets_one_updating_line() -> None:
    out = io.StringIO()
    b = RoundBar(out, tty=True, width=4)
    b.update(round=1, total=2, status="RUNNING")
    b.update(round=2, total=2, status="RUNNING")
    b.close()
    text = out.getvalue()
    assert text.count("\r\x1b[2K") == 2
    assert text.endswith("(RUNNING)\n") and text.count("\n") == 1


class ScriptedSession:
    """Answers get_job_meta/show_stats from a script of (status, round) steps
    (pure logic of the wait command: the real session is tested end to end in
    tests/integration/test_progress.py)."""

    def __init__(self, steps: list[tuple[str, int | None]], *, stats_refused: bool = False) -> None:
        self.steps = steps
        self.i = -1
        self.stats_refused = stats_refused

    def _meta(self) -> JobMeta:
        status, _ = self.steps[self.i]
        return JobMeta.from_json({"job_id": "j1", "name": "n", "status": status})

    def wait_for_job(self, job_id: str, *, timeout: Any = None, on_poll: Any = None) -> JobMeta:
        for i in range(len(self.steps)):
            self.i = i
            if on_poll is not None:
                on_poll(self._meta())
        return self._meta()

    def show_stats(self, job_id: str) -> JobStats:
        if self.stats_refused:
            raise NotAuthorizedError("no")
        status, rnd = self.steps[self.i]
        rows = [{"round": k, "server": {"acc": k / 10}} for k in range(1, (rnd or 0) + 1)]
        return JobStats.from_json(
            {"job_id": "j1", "status": status, "current_round": rnd, "num_rounds": 3,
             "metrics": rows}
        )  # fmt: skip


def test_wait_draws_the_rounds_it_sees(monkeypatch: Any) -> None:
    # Every poll is shown (the throttle is wall time: 1 s).
    monkeypatch.setattr("shoal.admin.commands.time.monotonic", iter(range(0, 1000, 2)).__next__)
    steps = [("SUBMITTED", None), ("RUNNING", 1), ("RUNNING", 2), ("FINISHED:COMPLETED", 3)]
    out = io.StringIO()
    outcome = run_command(
        ScriptedSession(steps), "wait", ["j1"], progress=RoundBar(out, tty=False, width=3)
    )
    assert outcome.ok and outcome.text == "Job j1 FINISHED:COMPLETED"
    assert out.getvalue().splitlines() == [
        "(SUBMITTED)",
        "round 1/3 [#--]  33% global acc=0.1 (RUNNING)",
        "round 2/3 [##-]  66% global acc=0.2 (RUNNING)",
        "round 3/3 [###] 100% global acc=0.3 (FINISHED:COMPLETED)",
    ]


def test_wait_without_stats_rights_waits_without_a_bar(monkeypatch: Any) -> None:
    monkeypatch.setattr("shoal.admin.commands.time.monotonic", iter(range(0, 1000, 2)).__next__)
    out = io.StringIO()
    session = ScriptedSession([("RUNNING", 1), ("FINISHED:COMPLETED", 3)], stats_refused=True)
    outcome = run_command(session, "wait_job", ["j1"], progress=RoundBar(out, tty=False))
    assert outcome.ok
    assert out.getvalue() == ""
