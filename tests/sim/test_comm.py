"""SimCommunicator on its own: routing, gather's ending conditions, late results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shoal.arrays import save_arrays
from shoal.errors import ConfigError
from shoal.sim import SimCommunicator


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any] | None]] = []

    def __call__(self, site: str, message: dict[str, Any] | None) -> None:
        self.sent.append((site, message))


def _comm(tmp_path: Path, sites: list[str]) -> tuple[SimCommunicator, Recorder, Path]:
    route = Recorder()
    comm = SimCommunicator(sites, route=route, tasks_dir=tmp_path / "tasks")
    weights = save_arrays(tmp_path / "g.safetensors", {"w": np.zeros(2, np.float32)})
    return comm, route, weights


def _result(comm: SimCommunicator, task_id: str, site: str, folder: Path) -> None:
    path = folder / f"{site}.safetensors"
    save_arrays(path, {"w": np.ones(2, np.float32)}, durable=False)
    comm.on_message(
        {
            "type": "result",
            "site": site,
            "task_id": task_id,
            "round": 1,
            "num_examples": 2,
            "metrics": {"a": 1.0},
            "path": str(path),
        }
    )


def test_scatter_routes_a_private_copy_and_gather_yields_results(tmp_path: Path) -> None:
    comm, route, weights = _comm(tmp_path, ["site-1", "site-2"])
    task_id = comm.scatter(
        task="train",
        round=1,
        weights_path=weights,
        sites=["site-1", "site-2"],
        meta={"total_rounds": 3},
    )
    assert [s for s, _ in route.sent] == ["site-1", "site-2"]
    message = route.sent[0][1]
    assert message is not None and message["meta"] == {"total_rounds": 3}
    assert Path(message["weights_path"]).parent.name == task_id
    folder = Path(message["weights_path"]).parent
    for site in ("site-1", "site-2"):
        _result(comm, task_id, site, folder)
    results = list(comm.gather(task_id, timeout=5))
    assert sorted(r.site for r in results) == ["site-1", "site-2"]
    assert results[0].arrays()["w"].tolist() == [1.0, 1.0]


def test_gather_ends_on_timeout_and_drops_late_results(tmp_path: Path) -> None:
    comm, route, weights = _comm(tmp_path, ["site-1", "site-2"])
    task_id = comm.scatter(task="train", round=1, weights_path=weights, sites=["site-1", "site-2"])
    folder = tmp_path / "tasks" / task_id
    _result(comm, task_id, "site-1", folder)
    assert [r.site for r in comm.gather(task_id, timeout=0.2)] == ["site-1"]
    _result(comm, task_id, "site-2", folder)
    assert not (folder / "site-2.safetensors").exists()


def test_gather_stops_waiting_for_a_site_that_exits(tmp_path: Path) -> None:
    comm, route, weights = _comm(tmp_path, ["site-1", "site-2"])
    task_id = comm.scatter(task="train", round=1, weights_path=weights, sites=["site-1", "site-2"])
    _result(comm, task_id, "site-1", tmp_path / "tasks" / task_id)
    comm.on_message({"type": "exit", "site": "site-2", "error": "boom"})
    assert [r.site for r in comm.gather(task_id, timeout=30)] == ["site-1"]
    assert comm.errors == {"site-2": "boom"}
    # A site that is gone is not offered the next task, nor told to finish.
    comm.scatter(task="train", round=2, weights_path=weights, sites=["site-1", "site-2"])
    assert [s for s, _ in route.sent][-1] == "site-1"
    route.sent.clear()
    comm.finish()
    comm.finish()
    assert route.sent == [("site-1", None)]


def test_unknown_sites_and_tasks_are_refused(tmp_path: Path) -> None:
    comm, _, weights = _comm(tmp_path, ["site-1"])
    with pytest.raises(ConfigError, match="site-9"):
        comm.scatter(task="train", round=1, weights_path=weights, sites=["site-9"])
    with pytest.raises(ConfigError, match="unknown task"):
        list(comm.gather("nope", timeout=1))
