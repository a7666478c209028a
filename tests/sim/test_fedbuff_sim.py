"""FedBuff end to end in ``shoal simulate``: one site ten times slower than
the others. The fast sites contribute most updates; every version is
published without waiting for the slow site; the slow site's late updates
still count (weighted by their staleness)."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

from shoal.arrays import load_arrays
from shoal.cli.app import main

# Every site pulls w towards 1 (w += 0.5 * (1 - w)); the last site takes ten
# times as long.
SLOW_TRAIN = """\
import time
import shoal.client as fl

fl.init()
info = fl.system_info()
slow = info["site_index"] == info["num_sites"] - 1
while fl.is_running():
    m = fl.receive()
    if m is None:
        break
    time.sleep(1.0 if slow else 0.1)
    w = m.params["w"]
    w += 0.5 * (1.0 - w)
    fl.send(fl.FLModel(params={"w": w}, metrics={"slow": float(slow)}, num_examples=10))
"""


def _job(tmp_path: Path) -> Path:
    job = tmp_path / "jobs" / "buff"
    (job / "app").mkdir(parents=True)
    (job / "job.yml").write_text(
        textwrap.dedent(
            """\
            name: buff
            min_clients: 2
            workflow: {name: fedbuff, num_versions: 10, buffer_size: 2, round_timeout_s: 30}
            client: {script: train.py}
            server: {initial_weights: "weights:initial"}
            """
        )
    )
    (job / "app" / "weights.py").write_text(
        "import numpy as np\n\ndef initial():\n    return {'w': np.zeros(3)}\n"
    )
    (job / "app" / "train.py").write_text(SLOW_TRAIN)
    return job


def test_fedbuff_does_not_wait_for_the_slow_site(tmp_path: Path) -> None:
    t0 = time.monotonic()
    # One thread per site: a sleeping site must not hold the fast ones' slot.
    code = main(["simulate", str(_job(tmp_path)), "-n", "4", "-w", str(tmp_path), "-t", "4"])
    seconds = time.monotonic() - t0
    assert code == 0
    run = tmp_path / "buff"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in lines] == list(range(1, 11))
    total: dict[str, int] = {}
    for m in lines:
        for site, n in m["contributions"].items():
            total[site] = total.get(site, 0) + n
    assert sum(total.values()) == 20
    fast = [total.get(s, 0) for s in ("site-1", "site-2", "site-3")]
    # 20 results in ~0.7 s of fast work: the slow site (1 s a task) has at most one in.
    assert min(fast) >= 4, total
    assert total.get("site-4", 0) <= 1, total
    # Ten rounds of FedAvg would wait 10 x 1 s for site-4.
    assert seconds < 9, seconds
    final = load_arrays(run / "models" / "global_final.safetensors")["w"]
    assert (final > 0.9).all() and (final <= 1.0).all(), final
    log = (run / "logs" / "server.log").read_text()
    assert "version 10/10 published" in log
