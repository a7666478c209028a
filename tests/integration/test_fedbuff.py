"""FedBuff through real daemons from real kits, over mutual TLS: the board
keeps each site's own task (supersede="targets"), results stream into the
workflow process as they arrive, and a site ten times slower than the
others never holds a version up."""

from __future__ import annotations

import dataclasses
import json
import signal
import textwrap
from pathlib import Path

import pytest
from faults.harness import wait_for, write_job

from shoal.workflows.store import RoundStore

from .conftest import Federation
from .test_workflow_plugin import _kill_workflow_process

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


def test_a_server_killed_mid_version_keeps_the_buffered_results(fed_factory, tmp_path: Path):  # type: ignore[no-untyped-def]
    """SIGKILL the server (and its workflow process, as a machine crash would)
    while version 1's buffer holds site-1's results: the resumed run starts
    from them, version 1 is built of those and the answers after the restart."""
    fed = fed_factory()
    admin = fed.start_all(heartbeat_s=6)
    # site-1 answers every 2 s; site-2 not before the crash.
    (fed.gate / "config.json").write_text(json.dumps({"sleep": {"site-1": 2, "site-2": 600}}))
    job = write_job(tmp_path / "job", num_rounds=1, min_clients=2, round_timeout_s=120)
    yml = (job / "job.yml").read_text()
    assert "  num_rounds: 1\n" in yml
    (job / "job.yml").write_text(
        yml.replace("  name: fedavg\n", "  name: fedbuff\n").replace(
            "  num_rounds: 1\n", "  num_versions: 2\n  buffer_size: 3\n"
        )
    )
    job_id = admin.submit_job(job)
    saved = fed.run_dir(job_id) / "server_state" / "round_0000.safetensors"
    wait_for(saved.exists, 120, "site-1's first result in version 1's buffer")

    fed.kill("server1", signal.SIGKILL)
    _kill_workflow_process(job_id)
    store = RoundStore(fed.run_dir(job_id))
    ckpt = store.load_checkpoint()
    assert ckpt is not None and ckpt.round == 0
    held = store.load_state(dataclasses.replace(ckpt, state="server_state/round_0000.safetensors"))
    kept = [r["site"] for r in held["fedbuff_buffer"]["results"]]
    assert kept and set(kept) == {"site-1"}, kept

    (fed.gate / "config.json").write_text(json.dumps({"sleep": {"site-1": 0.2, "site-2": 0.2}}))
    log = fed.restart_and_finish(job_id)
    assert f"version 1: {len(kept)} result(s) already in the buffer" in log, log
    versions = {m["round"]: m for m in fed.metrics(job_id)}
    assert sorted(versions) == [1, 2]
    assert sum(versions[1]["contributions"].values()) == 3
    assert versions[1]["contributions"]["site-1"] >= len(kept)
    assert not saved.exists()
