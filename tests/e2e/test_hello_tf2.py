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
import subprocess
import sys
from pathlib import Path

import pytest

from shoal import poc

from .conftest import MNIST, check_round_logs, require_mnist, run_example

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(900),
    # shoal.poc.start() drops the Popen objects of the daemons it leaves running.
    pytest.mark.filterwarnings(r"ignore:subprocess \d+ is still running:ResourceWarning"),
]

require_mnist()
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


def test_hello_tf2_end_to_end(federation: poc.PocLayout, tmp_path: Path) -> None:
    done = run_example(federation, "hello-tf2", tmp_path / "download")
    check_round_logs(done, 3, "round {k}/{n}")  # train.py's own line
    for site in ("site-1", "site-2"):
        assert done.logs[f"{site}.log"].count("Received from server. getTask: train size:") == 3

    # The server's metrics: the global model after round 3 on the whole test set.
    accuracy = done.rounds[-1]["server"]["accuracy"]
    assert accuracy >= MIN_ACCURACY, done.rounds[-1]

    # The downloaded model loads in Keras and scores that accuracy again.
    model_file = done.out / "run" / "models" / "global_final.keras"
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
