"""The audit trail's chain, anchor, rotation and concurrency, on real files."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from shoal.audit import (
    GENESIS,
    AuditTrail,
    ConfigWatch,
    Head,
    read_events,
    trail_files,
    verify_trail,
)
from shoal.cli.app import main
from shoal.errors import ConfigError


def _trail(tmp_path: Path, n: int = 5, **kw: int) -> AuditTrail:
    trail = AuditTrail(tmp_path / "audit.jsonl", actor="server1", **kw)
    for i in range(n):
        trail.record("admin.command", command="list_jobs", caller="admin@x", i=i)
    return trail


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_lines_are_canonical_json_chained_from_genesis(tmp_path: Path) -> None:
    trail = _trail(tmp_path, 3)
    docs = [json.loads(line) for line in _lines(trail.path)]
    assert [d["seq"] for d in docs] == [1, 2, 3]
    assert docs[0]["prev"] == GENESIS
    assert docs[0]["by"] == "server1" and docs[0]["event"] == "admin.command"
    report = verify_trail(trail.path)
    assert report.ok and report.lines == 3 and report.head == trail.head
    assert report.anchor == trail.head


@pytest.mark.parametrize(
    ("tamper", "bad_line"),
    [
        ("edit", 3),  # line 2 edited: line 3's prev no longer matches
        ("delete", 2),  # line 2 gone: line 3 (now 2nd) does not chain to line 1
        ("swap", 2),
        ("insert", 3),
    ],
)
def test_tampering_is_named_by_its_line(tmp_path: Path, tamper: str, bad_line: int) -> None:
    trail = _trail(tmp_path, 5)
    lines = _lines(trail.path)
    if tamper == "edit":
        lines[1] = lines[1].replace(b"list_jobs", b"sys_info!")
    elif tamper == "delete":
        del lines[1]
    elif tamper == "swap":
        lines[1], lines[2] = lines[2], lines[1]
    else:
        lines.insert(2, lines[1])
    trail.path.write_bytes(b"".join(lines))
    report = verify_trail(trail.path)
    assert not report.ok
    assert report.problem.startswith(f"line {bad_line} of audit.jsonl:")


def test_editing_the_last_line_or_cutting_the_tail_is_caught_by_the_anchor(
    tmp_path: Path,
) -> None:
    trail = _trail(tmp_path, 5)
    lines = _lines(trail.path)
    trail.path.write_bytes(b"".join(lines[:-2]))
    report = verify_trail(trail.path)
    assert not report.ok and "2 line(s) cut off the end" in report.problem
    trail.path.write_bytes(b"".join([*lines[:-1], lines[-1].replace(b"list_jobs", b"LIST_JOBS")]))
    report = verify_trail(trail.path)
    assert not report.ok and "does not match the anchor" in report.problem


def test_a_head_kept_elsewhere_catches_a_rewritten_anchor(tmp_path: Path) -> None:
    trail = _trail(tmp_path, 4)
    kept = trail.head
    lines = _lines(trail.path)
    trail.path.write_bytes(b"".join(lines[:-1]))
    # Whoever cut the tail also rewrote the anchor to match it.
    anchor = trail.path.with_name("audit.jsonl.anchor")
    anchor.write_text(json.dumps({"seq": 3, "hash": _head_of(lines[:-1]).hash}))
    assert verify_trail(trail.path).ok
    report = verify_trail(trail.path, expect_head=kept)
    assert not report.ok and "expected head" in report.problem


def _head_of(lines: list[bytes]) -> Head:
    import hashlib

    last = lines[-1].rstrip(b"\n")
    return Head(json.loads(last)["seq"], hashlib.sha256(last).hexdigest())


def test_a_torn_last_line_is_cut_recorded_and_the_chain_goes_on(tmp_path: Path) -> None:
    trail = _trail(tmp_path, 3)
    with open(trail.path, "ab") as f:
        f.write(b'{"seq":4,"event":"half')
    assert "unfinished last line" in verify_trail(trail.path).problem
    again = AuditTrail(trail.path, actor="server1")
    again.record("job.status", job_id="j1", status="RUNNING")
    events = read_events(trail.path)
    assert [e["event"] for e in events][-2:] == ["audit.recovered", "job.status"]
    assert events[-2]["torn_bytes"] == len(b'{"seq":4,"event":"half')
    assert verify_trail(trail.path).ok


def test_rotation_keeps_one_chain_across_files(tmp_path: Path) -> None:
    trail = _trail(tmp_path, 120, max_bytes=4096)
    files = trail_files(trail.path)
    assert len(files) >= 3 and files[-1] == trail.path
    assert all(f.stat().st_size <= 4096 for f in files)
    first = json.loads(_lines(files[1])[0])
    assert first["event"] == "audit.rotated" and first["previous_file"] == files[0].name
    report = verify_trail(trail.path)
    assert report.ok and report.head == trail.head
    assert report.lines == trail.head.seq  # rotation lines included, none lost
    assert [e["i"] for e in read_events(trail.path, match={"event": "admin.command"})] == list(
        range(120)
    )
    # A reopened trail carries on from the last file.
    AuditTrail(trail.path, actor="server1", max_bytes=4096).record("x.y")
    assert verify_trail(trail.path).ok


def test_a_deleted_or_edited_rotated_file_breaks_the_chain(tmp_path: Path) -> None:
    trail = _trail(tmp_path, 120, max_bytes=4096)
    files = trail_files(trail.path)
    lines = _lines(files[0])
    files[0].write_bytes(b"".join([lines[0].replace(b"server1", b"server2"), *lines[1:]]))
    assert verify_trail(trail.path).problem.startswith(f"line 2 of {files[0].name}:")
    files[1].unlink()
    files[0].write_bytes(b"".join(lines))
    assert verify_trail(trail.path).problem.startswith(f"line 1 of {files[2].name}:")


def test_threads_append_one_unbroken_chain(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.jsonl", actor="server1", max_bytes=8192)

    def write(k: int) -> None:
        for i in range(40):
            trail.record("job.status", durable=i % 2 == 0, job_id=f"{k}-{i}")

    threads = [threading.Thread(target=write, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = verify_trail(trail.path)
    assert report.ok, report.problem
    ids = [e["job_id"] for e in read_events(trail.path, match={"event": "job.status"})]
    assert sorted(ids) == sorted(f"{k}-{i}" for k in range(6) for i in range(40))


def test_read_events_filters(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.jsonl", actor="server1")
    trail.record("site.connected", site="site-1")
    trail.record("job.status", job_id="j", sites=["site-1", "site-2"])
    trail.record("site.connected", site="site-2")
    assert [e["seq"] for e in read_events(trail.path, match={"site": "site-2"})] == [3]
    assert [e["seq"] for e in read_events(trail.path, match={"sites": "site-2"})] == [2]
    assert [e["seq"] for e in read_events(trail.path, limit=2)] == [2, 3]
    assert read_events(trail.path, since="2999-01-01") == []


def test_reserved_fields_and_bad_heads_are_refused(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.jsonl", actor="s")
    with pytest.raises(ValueError, match="seq"):
        trail.record("x", seq=3)
    with pytest.raises(ConfigError, match="SEQ:SHA256"):
        Head.parse("12:abc")
    with pytest.raises(ConfigError, match="no audit trail"):
        verify_trail(tmp_path / "none.jsonl")


def test_config_watch_records_loads_and_changes(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit" / "audit.jsonl", actor="site-1")
    filters = tmp_path / "filters.yml"
    policy = tmp_path / "policy.yml"
    filters.write_text("result_out: []\n")
    watch = ConfigWatch(trail, {"filters": filters})
    watch.add("policy", policy)
    watch.check()
    watch.check()  # nothing moved: nothing recorded
    filters.write_text("result_out: [{filter: a:b}]\n")
    policy.write_text("allow: []\n")
    watch.check()
    events = read_events(trail.path)
    assert [(e["event"], e["name"]) for e in events] == [
        ("config.loaded", "filters"),
        ("config.loaded", "policy"),
        ("config.changed", "filters"),
        ("config.changed", "policy"),
    ]
    assert events[1]["sha256"] == "" and events[3]["previous_sha256"] == ""
    assert events[2]["previous_sha256"] == events[0]["sha256"] != events[2]["sha256"]


def test_cli_verify_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trail = _trail(tmp_path, 4)
    assert main(["audit", "verify", str(trail.path)]) == 0
    assert "OK: 4 line(s)" in capsys.readouterr().out
    assert main(["audit", "verify", str(trail.path), "--head", str(trail.head)]) == 0
    lines = _lines(trail.path)
    trail.path.write_bytes(b"".join([lines[0], lines[2], lines[3]]))
    assert main(["audit", "verify", str(trail.path)]) == 1
    assert "FAILED: line 2 of audit.jsonl" in capsys.readouterr().out
    assert main(["audit", "show", str(trail.path), "-n", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["seq"] == 4


def test_two_writers_on_one_trail_keep_one_chain(tmp_path: Path) -> None:
    # As two processes would: each its own object, the flock between them.
    a = AuditTrail(tmp_path / "audit.jsonl", actor="a", max_bytes=4096)
    b = AuditTrail(tmp_path / "audit.jsonl", actor="b", max_bytes=4096)
    for i in range(60):
        (a if i % 3 else b).record("x.y", i=i)
    report = verify_trail(a.path)
    assert report.ok, report.problem
    assert [e["i"] for e in read_events(a.path, match={"event": "x.y"})] == list(range(60))


def test_a_write_that_fails_is_counted_and_the_chain_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    trail = _trail(tmp_path, 2)
    open_locked = AuditTrail._open_locked

    class Full:
        """The trail's file on a full disk: a write puts half a line there, then fails."""

        def __init__(self, f: Any) -> None:
            self._f = f

        def write(self, data: bytes) -> int:
            self._f.write(data[:7])
            raise OSError(28, "No space left on device")

        def __getattr__(self, name: str) -> Any:
            return getattr(self._f, name)

    monkeypatch.setattr(AuditTrail, "_open_locked", lambda self: Full(open_locked(self)))
    with caplog.at_level("ERROR", logger="shoal.audit"):
        trail.record("job.status", job_id="j1")
        trail.record("job.status", job_id="j2")
    assert "No space left on device; 2 lost so far" in caplog.text.replace(")", "")
    assert verify_trail(trail.path).ok  # no half line left
    monkeypatch.setattr(AuditTrail, "_open_locked", open_locked)
    trail.record("job.status", job_id="j3")
    assert verify_trail(trail.path).ok
    events = read_events(trail.path)
    assert [e["event"] for e in events][-2:] == ["audit.lost", "job.status"]
    assert events[-2]["lost_events"] == 2 and events[-1]["job_id"] == "j3"
