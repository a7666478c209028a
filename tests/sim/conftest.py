from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HELLO_NUMPY = ROOT / "examples" / "hello-numpy"


@pytest.fixture
def make_job(tmp_path: Path) -> Callable[..., Path]:
    """A small fedavg job whose train.py is ``script`` (numpy only)."""

    def make(
        script: str,
        *,
        name: str = "tiny",
        min_clients: int = 1,
        rounds: int = 2,
        timeout: float = 30,
        args: str = "[]",
    ) -> Path:
        job = tmp_path / "jobs" / name
        (job / "app").mkdir(parents=True)
        (job / "job.yml").write_text(
            textwrap.dedent(
                f"""\
                name: {name}
                min_clients: {min_clients}
                workflow: {{name: fedavg, num_rounds: {rounds}, round_timeout_s: {timeout}}}
                client: {{script: train.py, args: {args}}}
                server: {{initial_weights: "weights:initial"}}
                """
            )
        )
        (job / "app" / "weights.py").write_text(
            "import numpy as np\n\ndef initial():\n    return {'w': np.zeros(3)}\n"
        )
        (job / "app" / "train.py").write_text(textwrap.dedent(script))
        return job

    return make
