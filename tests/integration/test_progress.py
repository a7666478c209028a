"""`shoal admin submit_job --wait` on a real POC federation: the round
progress bar in a log (one plain line per round, on stderr), and --json
output that stays one JSON document with nothing beside it."""

from __future__ import annotations

import json
import re
from typing import Any

from shoal.cli.app import main

from .conftest import HELLO_NUMPY


def test_submit_and_wait_shows_rounds_then_json_is_unchanged(federation: Any, capsys: Any) -> None:
    layout = federation.layout
    base = ["admin", "--kit", str(layout.admin_kit), "--server", layout.admin_address]
    assert main([*base, "submit_job", str(HELLO_NUMPY), "--wait", "--timeout", "180"]) == 0
    out, err = capsys.readouterr()
    job_id = re.search(r"Submitted job: (\S+)", out)
    assert job_id, out
    assert f"Job {job_id[1]} FINISHED:COMPLETED" in out
    lines = err.splitlines()
    assert "\x1b" not in err and "\r" not in err  # not a terminal: plain lines
    rounds = [int(m[1]) for line in lines if (m := re.match(r"round (\d+)/5 ", line))]
    assert rounds == sorted(rounds) and rounds[-1] == 5, err
    # One line per round (and status), never the same one twice.
    assert len(lines) == len(set(lines)), err
    assert lines[-1].startswith("round 5/5 [########################] 100% global ")
    assert lines[-1].endswith("(FINISHED:COMPLETED)")
    assert re.search(r" loss=\S+ weight_error=\S+", lines[-1]), lines[-1]  # server.evaluate

    assert main([*base, "--json", "wait", job_id[1]]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    document = json.loads(out)
    assert document["command"] == "wait" and document["result"]["status"] == "FINISHED:COMPLETED"
