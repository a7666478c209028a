from __future__ import annotations

from pathlib import Path

import pytest

JOB_YML = """\
name: hello-tf2
min_clients: 2
sites: [site-1, site-2]
workflow:
  name: fedavg
  num_rounds: 3
  round_timeout_s: 600
client:
  script: train.py
  args: ["--epochs", 2]
  env: {KEY: value, N: 3}
server:
  model: model:build_model
  evaluate: evaluate:evaluate
resources: {gpu: 1}
start_timeout_s: 300
"""


def make_job(root: Path, job_yml: str = JOB_YML) -> Path:
    (root / "app").mkdir(parents=True)
    (root / "job.yml").write_text(job_yml)
    (root / "app" / "train.py").write_text("print('train')\n")
    (root / "app" / "model.py").write_text("def build_model():\n    return None\n")
    (root / "app" / "evaluate.py").write_text("def evaluate(p, r):\n    return {}\n")
    return root


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    return make_job(tmp_path / "hello-tf2")
