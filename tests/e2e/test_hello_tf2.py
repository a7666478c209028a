"""The reference scenario end to end: hello-tf2 (Keras, MNIST, FedAvg) in a real federation.

POC provisioning -> server + 2 sites from their startup kits (mutual TLS on
127.0.0.1) -> the admin submits ``hello-tf2`` from its kit's transfer/ folder
-> SUBMITTED/DISPATCHED -> RUNNING -> FINISHED:COMPLETED -> the downloaded
global model loads in Keras and scores the accuracy the server measured.

Needs TensorFlow and a local MNIST (``SHOAL_MNIST_PATH=/path/to/mnist.npz``);
about 60-90 s on two cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal import jobstatus, poc

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(900),
    # shoal.poc.start() drops the Popen objects of the daemons it leaves running.
    pytest.mark.filterwarnings(r"ignore:subprocess \d+ is still running:ResourceWarning"),
]

HELLO_TF2 = Path(__file__).resolve().parents[2] / "examples" / "hello-tf2"
MNIST = os.environ.get("SHOAL_MNIST_PATH", "")

if not MNIST or not Path(MNIST).is_file():
    pytest.skip(
        "SHOAL_MNIST_PATH is not set to a local mnist.npz (the e2e test never downloads)",
        allow_module_level=True,
    )
if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("keras") is None:
    pytest.skip(
        "TensorFlow/Keras is not installed (pip install -e '.[tf]')", allow_module_level=True
    )

#: The global model's accuracy on the MNIST test set after round 3.
MIN_ACCURACY = 0.96

EVALUATE = """
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras, numpy as np
model = keras.models.load_model(sys.argv[1])
with np.load(sys.argv[2]) as f:
    x, y = f["x_test"].astype(np.float32) / 255.0, f["y_test"].astype(np.int64)
loss, acc = model.evaluate(x, y, batch_size=256, verbose=0)
print(json.dumps({"accuracy": float(acc), "loss": float(loss)}))
"""


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[poc.PocLayout]:
    ws = tmp_path / "poc"
    poc.prepare(ws, num_sites=2)
    layout = poc.start(ws, env={"SHOAL_MNIST_PATH": MNIST}, timeout=120)
    try:
        yield layout
    finally:
        poc.stop(ws)


def test_hello_tf2_end_to_end(federation: poc.PocLayout, tmp_path: Path) -> None:
    layout = federation
    shutil.copytree(
        HELLO_TF2,
        layout.admin_kit / "transfer" / "hello-tf2",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    with poc.admin_session(layout.workspace) as s:
        assert {site["name"] for site in s.check_status()["sites"] if site["connected"]} == {
            "site-1",
            "site-2",
        }
        job_id = s.submit_job("hello-tf2")  # looked up in the admin kit's transfer/

        states: list[str] = []
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status = s.get_job_meta(job_id)["status"]
            if not states or states[-1] != status:
                states.append(status)
            if jobstatus.is_finished(status):
                break
            time.sleep(0.2)
        print("states seen:", " -> ".join(states))
        assert states[-1] == jobstatus.COMPLETED, (states, s.get_job_meta(job_id)["error"])
        assert jobstatus.RUNNING in states, states
        assert states[0] in (jobstatus.SUBMITTED, jobstatus.DISPATCHED, jobstatus.RUNNING)
        order = list(jobstatus.ALL)
        assert [order.index(x) for x in states] == sorted(order.index(x) for x in states), states

        out = s.download_job(job_id, tmp_path / "download")

    # The server's metrics: the global model after round 3 on the whole test set.
    rounds = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert set(rounds[-1]["sites"]) == {"site-1", "site-2"}
    assert rounds[-1]["missing"] == []
    accuracy = rounds[-1]["server"]["accuracy"]
    print("server accuracy by round:", [round(r["server"]["accuracy"], 4) for r in rounds])
    assert accuracy >= MIN_ACCURACY, rounds[-1]

    # The downloaded model loads in Keras and scores that accuracy again.
    model_file = out / "run" / "models" / "global_final.keras"
    assert model_file.is_file()
    proc = subprocess.run(
        [sys.executable, "-c", EVALUATE, str(model_file), MNIST],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads(proc.stdout.strip().splitlines()[-1])
    print("reloaded model accuracy:", again["accuracy"])
    assert again["accuracy"] == pytest.approx(accuracy, abs=1e-3)

    # Logs of the server and of each site show the rounds.
    logs = {p.name: p.read_text(errors="replace") for p in (out / "logs").glob("*.log")}
    assert {"server.log", "site-1.log", "site-2.log"} <= set(logs)
    for k in (1, 2, 3):
        assert f"round {k}/3 done" in logs["server.log"], logs["server.log"][-2000:]
        for site in ("site-1", "site-2"):
            site_log = logs[f"{site}.log"]
            assert f"round {k}/3" in site_log, site_log[-2000:]  # train.py's own line
            assert f"Sent result to server: round {k} size:" in site_log, site_log[-2000:]
    for site in ("site-1", "site-2"):
        assert logs[f"{site}.log"].count("Received from server. getTask: train size:") == 3
