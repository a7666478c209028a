"""The Client API and task names: which task a script got, and what its
answer to each must carry, checked in ``send()`` with the task named.

The backend is the simulator's (a real one, fed task messages by hand)."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import shoal.client as fl
from shoal.arrays import load_arrays, save_arrays
from shoal.errors import ConfigError, ShoalError
from shoal.sim.site import SimBackend, SiteInfo, task_message


def _in_own_context(fn: Callable[[], None]) -> None:
    # The Client API keeps its state in a context variable: each test its own.
    contextvars.copy_context().run(fn)


def _backend(tmp_path: Path, *tasks: str) -> tuple[SimBackend, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []
    backend = SimBackend(
        SiteInfo(name="site-1", index=0),
        job_id="job",
        num_sites=1,
        results_dir=tmp_path / "results",
        emit=sent.append,
        slots=threading.Semaphore(1),
    )
    weights = save_arrays(tmp_path / "g.safetensors", {"w": np.arange(3, dtype=np.float32)})
    for i, task in enumerate(tasks):
        backend.inbox.put(
            task_message(
                site="site-1", task_id=f"t{i}", task=task, round=0, weights_path=weights, meta={}
            )
        )
    backend.inbox.put(None)
    return backend, sent


def test_the_task_name_and_a_validate_answer(tmp_path: Path) -> None:
    backend, sent = _backend(tmp_path, "validate")

    def script() -> None:
        fl.use_backend(backend)
        fl.init()
        with pytest.raises(ShoalError, match="no task yet"):
            fl.is_train()
        assert fl.is_running()
        # Known before receive(): the task is_running() fetched.
        assert fl.is_evaluate() and not fl.is_train() and not fl.is_submit_model()
        task = fl.receive()
        assert task.task == "validate" and fl.is_evaluate()
        # A script that trains on every task: its weights are refused, named.
        with pytest.raises(ConfigError, match=r"the task is 'validate'.*fl.is_evaluate\(\)"):
            fl.send(fl.FLModel(params=task.params, num_examples=3))
        with pytest.raises(ConfigError, match="'validate' result must carry metrics"):
            fl.send(fl.FLModel(num_examples=3))
        with pytest.raises(ConfigError, match=r"num_examples \(the examples evaluated\)"):
            fl.send(fl.FLModel(metrics={"loss": 0.5}))
        fl.send(fl.FLModel(metrics={"loss": 0.5}, num_examples=3))
        assert not fl.is_running()

    _in_own_context(script)
    (result,) = sent
    assert result["num_examples"] == 3 and result["metrics"] == {"loss": 0.5}
    # No arrays: an empty payload on disk.
    assert load_arrays(result["path"]) == {}


def test_a_submit_model_answer_carries_the_local_model(tmp_path: Path) -> None:
    backend, sent = _backend(tmp_path, "submit_model", "train")

    def script() -> None:
        fl.use_backend(backend)
        fl.init()
        local = {"w": np.full(3, 7.0, np.float32)}
        task = fl.receive()
        assert fl.is_submit_model() and task.task == "submit_model"
        with pytest.raises(ConfigError, match="task is 'submit_model'.*params is empty"):
            fl.send(fl.FLModel(metrics={"loss": 1.0}))
        fl.send(fl.FLModel(params=local))
        fl.receive()
        assert fl.is_train()
        fl.send(fl.FLModel(params=local, num_examples=5))

    _in_own_context(script)
    assert [r["task_id"] for r in sent] == ["t0", "t1"]
