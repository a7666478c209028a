"""FedBuff through real daemons from real kits, over mutual TLS: the board
keeps each site's own task (supersede="targets"), results stream into the
workflow process as they arrive, and a site ten times slower than the
others never holds a version up."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from .conftest import Federation

pytestmark = pytest.mark.slow

TRAIN = """\
import time
import shoal.client as fl

fl.init()
slow = fl.system_info()["site_name"] == "site-3"
while fl.is_running():
    m = fl.receive()
    if m is None:
        break
    time.sleep(2.0 if slow else 0.2)
    w = m.params["w"]
    w += 0.5 * (1.0 - w)
    fl.send(fl.FLModel(params={"w": w}, metrics={"slow": float(slow)}, num_examples=10))
"""


def _job(folder: Path) -> Path:
    (folder / "app").mkdir(parents=True)
    (folder / "job.yml").write_text(
        textwrap.dedent(
            """\
            name: buff
            min_clients: 3
            sites: [site-1, site-2, site-3]
            workflow: {name: fedbuff, num_versions: 8, buffer_size: 2, round_timeout_s: 60}
            client: {script: train.py}
            server: {initial_weights: "weights:initial"}
            """
        )
    )
    (folder / "app" / "weights.py").write_text(
        "import numpy as np\n\ndef initial():\n    return {'w': np.zeros(3)}\n"
    )
    (folder / "app" / "train.py").write_text(TRAIN)
    return folder


def test_fedbuff_through_the_daemons(federation_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fed: Federation = federation_factory(3)
    s = fed.admin()
    job_id = s.submit_job(_job(tmp_path / "buff"))
    meta = s.wait_for_job(job_id, timeout=180)
    assert meta["status"] == "FINISHED:COMPLETED", meta
    out = s.download_job(job_id, tmp_path / "dl")
    lines = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in lines] == list(range(1, 9))
    total: dict[str, int] = {}
    for m in lines:
        for site, n in m["contributions"].items():
            total[site] = total.get(site, 0) + n
    assert sum(total.values()) == 16
    # 16 results at 0.2 s from two fast sites: ~1.6 s; site-3 needs 2 s for one.
    assert total.get("site-3", 0) <= 1, total
    assert total["site-1"] >= 6 and total["site-2"] >= 6, total
    # Versions came about every 0.2 s, not every 2 s.
    assert sum(m["duration_s"] for m in lines) < 8, lines
    log = s.get_log(job_id, "server")
    assert "version 8/8 published" in log, log
