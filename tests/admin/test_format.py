from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from shoal.admin import format as fmt

NVFLARE_JOB = {
    "job_id": "c8973f05-8787-41c5-8568-ecc15c7683b2",
    "name": "hello-tf2",
    "status": "FINISHED:COMPLETED",
    "submit_time": "2024-05-23T09:47:04.488652+00:00",
    "run_duration_s": 104.335456,
    "sites": ["site-1", "site-2"],
    "current_round": 5,
    "num_rounds": 5,
}


def test_list_jobs_table_matches_the_nvflare_layout() -> None:
    rule = "-" * 125
    assert fmt.format_jobs([NVFLARE_JOB]).splitlines() == [
        rule,
        "| JOB ID                               | NAME      | STATUS             "
        "| SUBMIT TIME                      | RUN DURATION   |",
        rule,
        "| c8973f05-8787-41c5-8568-ecc15c7683b2 | hello-tf2 | FINISHED:COMPLETED "
        "| 2024-05-23T09:47:04.488652+00:00 | 0:01:44.335456 |",
        rule,
    ]


def test_list_jobs_without_jobs_keeps_the_header_and_says_so() -> None:
    lines = fmt.format_jobs([]).splitlines()
    assert lines[1].startswith("| JOB ID | NAME | STATUS")
    assert lines[-1] == "No jobs."


def test_job_not_started_shows_a_dash_for_its_duration() -> None:
    job = {**NVFLARE_JOB, "status": "SUBMITTED", "run_duration_s": None}
    row = fmt.format_jobs([job]).splitlines()[3]
    assert row.rstrip(" |").endswith("| -")


def test_table_pads_columns_and_flattens_newlines() -> None:
    out = fmt.format_table(["A", "LONGER"], [["x\ny", None], ["abc"]]).splitlines()
    assert out[0] == "-" * len(out[1])
    assert out[3] == "| x y | -      |"
    assert out[4] == "| abc |        |"
    assert len({len(line) for line in out}) == 1


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0:00:00.000000"),
        (104.335456, "0:01:44.335456"),
        (11.978134, "0:00:11.978134"),
        (3600 * 26 + 61.5, "26:01:01.500000"),
        (59.9999999, "0:01:00.000000"),
        (None, "-"),
    ],
)
def test_duration_is_hours_minutes_seconds_micros(seconds: float | None, text: str) -> None:
    assert fmt.format_duration(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.42, "0.4s ago"), (192, "3m 12s ago"), (7500, "2h 5m ago"), (90000, "1d 1h ago")],
)
def test_ago(seconds: float, text: str) -> None:
    assert fmt.format_ago(seconds) == text


STATUS = {
    "server": {
        "name": "server1",
        "status": "started",
        "start_time": "2024-05-23T09:00:00+00:00",
        "uptime_s": 3723.5,
        "running_jobs": ["job-1"],
    },
    "sites": [
        {
            "name": "site-1",
            "connected": True,
            "last_heartbeat_s_ago": 1.25,
            "running_jobs": ["job-1"],
            "address": "10.0.0.2",
        },
        {"name": "site-2", "connected": False, "last_heartbeat_s_ago": 95.0, "running_jobs": []},
    ],
}


def test_check_status_prints_the_server_line_and_a_site_table() -> None:
    out = fmt.format_status(STATUS)
    assert "Server: server1  status: started" in out
    assert "uptime: 1:02:03.500000" in out
    assert "Running jobs: 1 (job-1)" in out
    assert "Registered sites: 2, connected: 1" in out
    assert "| SITE   | CONNECTED | LAST HEARTBEAT | RUNNING JOBS |" in out
    assert "| site-1 | yes       | 1.2s ago       | job-1        |" in out
    assert "| site-2 | no        | 1m 35s ago     | -            |" in out


def test_check_status_server_or_client_only() -> None:
    assert "SITE" not in fmt.format_status(STATUS, target="server")
    assert "Server:" not in fmt.format_status(STATUS, target="client")


def test_stats_show_rounds_sites_and_metrics_per_round() -> None:
    out = fmt.format_stats(
        {
            "current_round": 2,
            "num_rounds": 5,
            "sites": {
                "site-1": {"state": "training", "round": 2, "metrics": {"loss": 0.1873}},
                "site-2": {"state": "idle", "round": 2, "metrics": {}},
            },
            "metrics": [{"accuracy": 0.9282, "round": 1}, {"round": 2, "accuracy": 0.94181234}],
        }
    )
    assert out.splitlines()[0] == "Round: 2/5"
    assert "| site-1 | training | 2     | loss=0.1873 |" in out
    assert "| site-2 | idle     | 2     | -           |" in out
    assert "| ROUND | ACCURACY |" in out
    assert "| 2     | 0.9418   |" in out  # 4 significant digits


# A metrics.jsonl row as the round driver writes it (docs/jobs.md), which
# show_stats used to print as raw dict reprs at full precision.
ROUND_ROW = {
    "aggregated": {"loss": 0.3771629235579377, "accuracy": 0.9313333333333333},
    "duration_s": 12.3456,
    "missing": [],
    "num_examples": 3000,
    "round": 1,
    "server": {"loss": 0.5172871998484554, "accuracy": 0.947},
    "sites": {
        "site-1": {"loss": 0.40522724328859927, "accuracy": 0.93},
        "site-2": {"loss": 0.3490986, "accuracy": 0.9326666666666666},
    },
    "started": 1716457624.459,  # 2024-05-23 09:47:04 UTC
}


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_stats_rounds_are_one_short_row_each(utc: None) -> None:
    """One row per round: local start time, seconds, sites answered, metrics
    to 4 significant digits; no per-site dicts, no float timestamps."""
    second = {
        **ROUND_ROW,
        "round": 2,
        "started": ROUND_ROW["started"] + 13,
        "duration_s": 0.0042,
        "missing": ["site-3", "site-4", "site-5", "site-6", "site-7", "site-8", "site-9"],
    }
    out = fmt.format_stats({"current_round": 2, "num_rounds": 3, "metrics": [ROUND_ROW, second]})
    lines = out.splitlines()
    assert lines[0] == "Round: 2/3"
    assert lines[2] == (
        "| ROUND | STARTED             | DURATION | SITES | EXAMPLES | GLOBAL LOSS "
        "| GLOBAL ACCURACY | MEAN LOSS | MEAN ACCURACY |"
    )
    assert lines[4] == (
        "| 1     | 2024-05-23 09:47:04 | 12.3s    | 2/2   | 3000     | 0.5173      "
        "| 0.9470          | 0.3772    | 0.9313        |"
    )
    assert lines[5].startswith("| 2     | 2024-05-23 09:47:17 | 0.004s   | 2/9   |")
    assert max(map(len, lines)) < 130
    assert "site-1" not in out and "{" not in out and "1716457624" not in out
    assert "GLOBAL: the server's evaluation of the new global model" in out
    assert "round 2: no result from site-3, site-4, site-5, site-6, site-7 and 2 more" in out


def test_stats_rounds_keep_fields_the_client_does_not_know(utc: None) -> None:
    out = fmt.format_stats({"metrics": [{"round": 1, "lr": 0.0012345678, "phase": "warmup"}]})
    assert "| ROUND | LR       | PHASE  |" in out
    assert "| 1     | 0.001235 | warmup |" in out
    assert "GLOBAL:" not in out and "MEAN:" not in out


def test_errors_grouped_per_target() -> None:
    out = fmt.format_errors({"server": [], "site-1": ["OOM in round 3", {"code": 137}]})
    assert out.splitlines() == ["site-1:", "  OOM in round 3", '  {"code": 137}']
    assert fmt.format_errors({"server": []}) == "No errors."


def test_job_detail_is_readable() -> None:
    meta = {**NVFLARE_JOB, "spec": {"min_clients": 2, "deploy_map": {"app": ["@ALL"]}}}
    out = fmt.format_job_detail(meta)
    assert "job_id:" in out.splitlines()[0]
    assert "run_duration: 0:01:44.335456" in out.replace("  ", " ")
    assert "round:" in out and "5/5" in out
    assert "sites:" in out and "site-1, site-2" in out
    assert "spec:" in out and "  min_clients: 2" in out


def test_log_keeps_text_and_names_an_empty_log() -> None:
    assert fmt.format_log("a\nb\n") == "a\nb"
    assert fmt.format_log("") == "(log is empty)"


HOSTILE_LOG = "round 1\tdone\n\x1b]0;pwned\x07\x1b[2J\rfake prompt\x9b31m\x7f\n"


def test_log_escape_sequences_are_shown_escaped() -> None:
    """A site's log must not reach the admin's terminal as escape sequences
    (set the title, clear the screen, overwrite a line); tabs and newlines stay."""
    assert fmt.format_log("\x1b]0;pwned\x07\x1b[2J") == "\\x1b]0;pwned\\x07\\x1b[2J"
    out = fmt.format_log(HOSTILE_LOG)
    assert out == "round 1\tdone\n\\x1b]0;pwned\\x07\\x1b[2J\\x0dfake prompt\\x9b31m\\x7f"
    assert not any(ord(ch) < 0x20 and ch not in "\n\t" or 0x7F <= ord(ch) <= 0x9F for ch in out)
    assert fmt.printable("naïve — ok ✓") == "naïve — ok ✓"  # printable text is untouched


def test_errors_and_table_cells_are_shown_escaped() -> None:
    errors = fmt.format_errors({"site-1": ["Error: \x1b[2Jboom"]})
    assert "\x1b" not in errors and "\\x1b[2Jboom" in errors
    table = fmt.format_jobs([{"job_id": "j1", "name": "evil\x1b]0;x\x07", "status": "RUNNING"}])
    assert "\x1b" not in table and "evil\\x1b]0;x\\x07" in table


# run/cross_site_eval.json as the cross_site_eval workflow writes it (shoal.evalmatrix).
MATRIX = {
    "global_model": "final",
    "models": ["global", "site-1", "site-2"],
    "sites": ["site-1", "site-2"],
    "results": {
        "global": {
            "site-1": {"num_examples": 64, "metrics": {"loss": 0.123456, "acc": 0.9}},
            "site-2": {"num_examples": 32, "metrics": {"loss": 0.5, "acc": 0.75}},
        },
        "site-1": {"site-1": {"num_examples": 64, "metrics": {"loss": 0.01, "acc": 1.0}}},
        "site-2": {
            "site-1": {"num_examples": 64, "metrics": {"loss": 2.0}},
            "site-2": {"num_examples": 32, "metrics": {"loss": 0.02}},
        },
    },
    "missing": {"site-1": {"site-2": "no answer within 600 s (or the site left)"}},
    "not_submitted": {"site-3": "refused: weight 'w': shape (3, 2) differs from (2, 3)"},
}


def test_stats_show_the_cross_site_matrix_one_table_per_metric() -> None:
    out = fmt.format_stats({"current_round": 2, "num_rounds": 2, "cross_site_eval": MATRIX})
    lines = out.splitlines()
    assert lines[1] == (
        "Cross-site evaluation: rows are models (global: the final global model), "
        "columns the sites that evaluated them"
    )
    loss = lines.index("loss:")
    assert lines[loss + 1 : loss + 8] == [
        "------------------------------",
        "| MODEL  | site-1  | site-2  |",
        "------------------------------",
        "| global | 0.1235  | 0.5000  |",
        "| site-1 | 0.01000 | -       |",
        "| site-2 | 2.000   | 0.02000 |",
        "------------------------------",
    ]
    assert "acc:" in lines
    assert "| site-2 | -      | -      |" in out  # site-2's model has no acc anywhere
    assert "no model from site-3: refused: weight 'w'" in out
    assert "site-1's model at site-2: no answer within 600 s (or the site left)" in out


def test_cross_site_names_from_a_job_are_shown_escaped() -> None:
    hostile = {**MATRIX, "not_submitted": {"site-1": "\x1b]0;pwned\x07"}}
    assert "\\x1b]0;pwned\\x07" in fmt.format_cross_site(hostile)
    assert "No results yet." in fmt.format_cross_site({"models": ["global"], "sites": ["a"]})
