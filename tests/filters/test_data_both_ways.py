"""Client configuration down; meta, extras and weight differences up; a filter
at each of the four points: in both simulator modes (threads hand results
over in memory, processes through files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shoal.arrays import load_arrays
from shoal.sim import SimulatorConfig, simulate

from .datajob import write_data_job


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_everything_beside_the_weights_travels(tmp_path: Path, mode: str) -> None:
    job = write_data_job(tmp_path / "datajob", rounds=2)
    result = simulate(
        SimulatorConfig(job_dir=job, num_sites=2, workdir=tmp_path / "runs", mode=mode)
    )
    assert result.ok, result.failure_summary()
    check_data_job_run(result.run_dir, rounds=2)


def check_data_job_run(run_dir: Path, *, rounds: int) -> None:
    """What a run of the data job must show, wherever it ran."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == list(range(1, rounds + 1))
    for line in lines:
        k = line["round"]
        for site, m in line["sites"].items():
            index = int(site.rsplit("-", 1)[1]) - 1
            assert m["lr"] == 0.25  # client.config reached the task's meta
            assert m["task_in_seen"] == 1.0  # the job's task_in filter ran at the site
            assert m["received_b"] == k - 1 + 100  # model_out changed what the sites got
            assert m["down_extra"] == k  # and sent extras down beside the weights
            assert m["seen_marked"] == 7.0  # result_out ran at the site, meta reached the server
            assert m["seen_site_index"] == index
            assert m["seen_diff"] == 1.0
            assert m["seen_control"] == index  # the extras arrived beside the weights
    final = load_arrays(run_dir / "models" / "global_final.safetensors", mmap=False)
    # Diffs of ones, folded onto the global model the server kept (not the
    # published +100): k after k rounds.
    np.testing.assert_array_equal(final["w"], np.full((4, 3), rounds, dtype=np.float32))
    np.testing.assert_array_equal(final["b"], np.full(3, rounds, dtype=np.float32))
