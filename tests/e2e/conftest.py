"""What the end-to-end example tests share: a POC federation with the local
MNIST, and an example job followed from submission to download.

Each test then checks what is particular to its framework: the accuracy,
the native model file, the lines its train script logs.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shoal import jobstatus, poc

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MNIST = os.environ.get("SHOAL_MNIST_PATH", "")


def require_mnist() -> None:
    """Skip the calling module unless a local mnist.npz is configured."""
    if not MNIST or not Path(MNIST).is_file():
        pytest.skip(
            "SHOAL_MNIST_PATH is not set to a local mnist.npz (the e2e test never downloads)",
            allow_module_level=True,
        )


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[poc.PocLayout]:
    """A POC server and two sites from their kits, the sites seeing the local MNIST."""
    ws = tmp_path / "poc"
    poc.prepare(ws, num_sites=2)
    layout = poc.start(ws, env={"SHOAL_MNIST_PATH": MNIST}, timeout=120)
    try:
        yield layout
    finally:
        poc.stop(ws)


@dataclass(frozen=True)
class Finished:
    """An example job that ended FINISHED:COMPLETED, downloaded."""

    states: list[str]
    out: Path
    rounds: list[dict[str, Any]]
    logs: dict[str, str]


def run_example(layout: poc.PocLayout, example: str, download_to: Path) -> Finished:
    """Submit ``examples/<example>`` unchanged from the admin kit's transfer/
    folder, follow its states to the end (they must only move forward and end
    COMPLETED), and download it."""
    shutil.copytree(
        EXAMPLES / example,
        layout.admin_kit / "transfer" / example,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    started = time.monotonic()
    with poc.admin_session(layout.workspace) as s:
        connected = {site["name"] for site in s.check_status()["sites"] if site["connected"]}
        assert connected == {"site-1", "site-2"}
        job_id = s.submit_job(example)  # looked up in the admin kit's transfer/

        states: list[str] = []
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status = s.get_job_meta(job_id)["status"]
            if not states or states[-1] != status:
                states.append(status)
            if jobstatus.is_finished(status):
                break
            time.sleep(0.2)
        print("states seen:", " -> ".join(states), f"in {time.monotonic() - started:.1f}s")
        assert states[-1] == jobstatus.COMPLETED, (states, s.get_job_meta(job_id)["error"])
        assert jobstatus.RUNNING in states, states
        assert states[0] in (jobstatus.SUBMITTED, jobstatus.DISPATCHED, jobstatus.RUNNING)
        order = list(jobstatus.ALL)
        assert [order.index(x) for x in states] == sorted(order.index(x) for x in states), states
        out = s.download_job(job_id, download_to)

    rounds = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    print("server accuracy by round:", [round(r["server"]["accuracy"], 4) for r in rounds])
    logs = {p.name: p.read_text(errors="replace") for p in (out / "logs").glob("*.log")}
    assert {"server.log", "site-1.log", "site-2.log"} <= set(logs)
    return Finished(states=states, out=out, rounds=rounds, logs=logs)


def check_round_logs(finished: Finished, rounds: int, site_line: str) -> None:
    """Every round is in the server's log, and in each site's: the train
    script's own line (``site_line`` formatted with ``k`` and ``n``) and the
    Client API's result line; every round's model reached every site."""
    for k in range(1, rounds + 1):
        assert f"round {k}/{rounds} done" in finished.logs["server.log"]
        for site in ("site-1", "site-2"):
            log = finished.logs[f"{site}.log"]
            assert site_line.format(k=k, n=rounds) in log, log[-2000:]
            assert f"Sent result to server: round {k} size:" in log, log[-2000:]
    assert [r["round"] for r in finished.rounds] == list(range(1, rounds + 1))
    assert set(finished.rounds[-1]["sites"]) == {"site-1", "site-2"}
    assert finished.rounds[-1]["missing"] == []
