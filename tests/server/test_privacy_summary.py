"""list_jobs' epsilon: read from the end of metrics.jsonl, whatever its length."""

from __future__ import annotations

import json
from pathlib import Path

from shoal.server.admin_service import _with_privacy


def test_the_last_rounds_epsilon_joins_the_summary(tmp_path: Path) -> None:
    assert _with_privacy({"job_id": "a"}, tmp_path) == {"job_id": "a"}  # no metrics yet
    lines = [
        {"round": k, "server": {"dp_epsilon": 0.5 * k, "pad": "x" * 5000}} for k in range(1, 40)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert _with_privacy({}, tmp_path) == {"dp_epsilon": 19.5}
    # A job without DP: nothing added.
    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"round": 1, "server": {"loss": 1.0}}) + "\n"
    )
    assert _with_privacy({}, tmp_path) == {}
