"""SCAFFOLD at a site (``shoal.client.scaffold``): option II of Algorithm 1 by
hand over two rounds, c_i kept in the state folder and found again by a new
process (a restarted worker), and every mismatch refused, naming it.

The numbers (w float32, names ["w"]):

round 1: x = [1, 2], no c in the task (c = 0), no c_i kept (c_i = 0)
  correction c - c_i = [0, 0]
  K = 2 steps, lr = 0.5, y = [0, 4]: (x - y) / (K lr) = [1, -2]
  c_i+ = 0 - 0 + [1, -2] = [1, -2];  delta c_i = [1, -2]
round 2: x = [2, 2], c = [0.25, -1]; c_i = [1, -2] read back
  correction = [-0.75, 1]
  K = 4, lr = 0.25, y = [1, 3]: (x - y) / (K lr) = [1, -1]
  c_i+ = [1, -2] - [0.25, -1] + [1, -1] = [1.75, -2];  delta c_i = [0.75, 0]
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import shoal.client as fl
from shoal.arrays import load_arrays, save_arrays
from shoal.client.scaffold import STATE_FILE, ControlVariates
from shoal.errors import ArrayFormatError, ConfigError, ShoalError

F = np.float32


def _task(x: list[float], c: list[float] | None, rnd: int) -> fl.FLModel:
    extras = {} if c is None else {"c/w": np.array(c, F)}
    return fl.FLModel(
        params={"w": np.array(x, F), "step": np.array(3, np.int64)},
        extras=extras,
        current_round=rnd,
    )


def test_option_two_by_hand_over_two_rounds(tmp_path: Path) -> None:
    cv = ControlVariates(_task([1, 2], None, 1), tmp_path)
    assert cv.names == ["w"]  # floating arrays only: not the int64 counter
    assert cv.is_zero and cv.loaded_round is None
    np.testing.assert_array_equal(cv.correction["w"], np.zeros(2, F))
    extras = cv.update({"w": np.array([0, 4], F)}, num_steps=2, lr=0.5)
    assert sorted(extras) == ["delta_c/w"]
    np.testing.assert_array_equal(extras["delta_c/w"], np.array([1, -2], F))
    assert extras["delta_c/w"].dtype == F
    np.testing.assert_array_equal(load_arrays(tmp_path / STATE_FILE)["w"], np.array([1, -2], F))

    cv = ControlVariates(_task([2, 2], [0.25, -1], 2), tmp_path)
    assert not cv.is_zero and cv.loaded_round == 1
    np.testing.assert_array_equal(cv.c_i["w"], np.array([1, -2], F))
    np.testing.assert_array_equal(cv.correction["w"], np.array([-0.75, 1], F))
    extras = cv.update({"w": np.array([1, 3], F)}, num_steps=4, lr=0.25)
    np.testing.assert_array_equal(extras["delta_c/w"], np.array([0.75, 0], F))
    np.testing.assert_array_equal(load_arrays(tmp_path / STATE_FILE)["w"], np.array([1.75, -2], F))


def test_plain_sgd_with_the_correction_makes_c_i_the_mean_gradient(tmp_path: Path) -> None:
    # Option II's point: with y = x - lr * sum(g_k + c - c_i), c_i+ is mean(g_k).
    rng = np.random.default_rng(0)
    save_arrays(tmp_path / STATE_FILE, {"w": rng.normal(size=4).astype(np.float64)})
    task = fl.FLModel(
        params={"w": rng.normal(size=4)}, extras={"c/w": rng.normal(size=4)}, current_round=5
    )
    cv = ControlVariates(task, tmp_path)
    w = np.array(task.params["w"])
    grads = []
    for _ in range(7):
        g = 3.0 * w - 1.0  # the gradient of a quadratic
        grads.append(g)
        w = w - 0.1 * (g + cv.correction["w"])
    cv.update({"w": w}, num_steps=7, lr=0.1)
    np.testing.assert_allclose(cv.c_i["w"], np.mean(grads, axis=0), rtol=1e-12)


def test_training_the_tasks_own_arrays_in_place(tmp_path: Path) -> None:
    # The task's arrays are the script's (writable): x is kept apart.
    task = _task([1, 2], None, 1)
    cv = ControlVariates(task, tmp_path)
    w = task.params["w"]
    w -= np.array([1, -2], F)  # now [0, 4], the y of round 1
    extras = cv.update({"w": w}, num_steps=2, lr=0.5)
    np.testing.assert_array_equal(extras["delta_c/w"], np.array([1, -2], F))


RESTARTED = """
import sys
import numpy as np
import shoal.client as fl
from shoal.client.scaffold import ControlVariates

task = fl.FLModel(params={"w": np.array([2, 2], np.float32)},
                  extras={"c/w": np.array([0.25, -1], np.float32)}, current_round=2)
cv = ControlVariates(task, sys.argv[1])
print(cv.loaded_round, cv.c_i["w"].tolist(), cv.correction["w"].tolist())
"""


def test_c_i_survives_the_process(tmp_path: Path) -> None:
    # The script run twice against one state folder: the second process,
    # like a worker restarted for the same job, finds round 1's c_i.
    cv = ControlVariates(_task([1, 2], None, 1), tmp_path)
    cv.update({"w": np.array([0, 4], F)}, num_steps=2, lr=0.5)
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(RESTARTED), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split("\n")[0] == "1 [1.0, -2.0] [-0.75, 1.0]"


def test_names_are_chosen_and_checked(tmp_path: Path) -> None:
    task = fl.FLModel(params={"a": np.zeros(2, F), "b": np.zeros(3, F)}, current_round=1)
    cv = ControlVariates(task, tmp_path, names=["b"])
    extras = cv.update({"a": np.ones(2, F), "b": np.ones(3, F)}, num_steps=1, lr=1.0)
    assert sorted(extras) == ["delta_c/b"]
    with pytest.raises(ArrayFormatError, match="'z' is not a weight of the task's model"):
        ControlVariates(task, tmp_path, names=["z"])
    counter = fl.FLModel(params={"n": np.zeros(1, np.int64)})
    with pytest.raises(ArrayFormatError, match="'n' is not a floating-point weight"):
        ControlVariates(counter, tmp_path, names=["n"])
    # The kept c_i is for "b" alone: a model that changed names is refused.
    with pytest.raises(ArrayFormatError, match=r"does not fit the model \(missing \['a'\]"):
        ControlVariates(task, tmp_path)


@pytest.mark.parametrize(
    ("extras", "message"),
    [
        ({"c/v": np.zeros(2, F)}, "names 'v', which is not a weight this site corrects"),
        ({"c/w": np.zeros(3, F)}, r"control variate 'w' is float32\[3\], the weight float32\[2\]"),
        ({"c/w": np.zeros(2, np.float64)}, "float64"),
    ],
)
def test_a_server_control_variate_that_does_not_fit_is_refused(
    tmp_path: Path, extras: dict[str, np.ndarray], message: str
) -> None:
    task = fl.FLModel(params={"w": np.zeros(2, F)}, extras={"other": np.ones(1), **extras})
    with pytest.raises(ArrayFormatError, match=message):
        ControlVariates(task, tmp_path)


def test_update_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    cv = ControlVariates(_task([1, 2], None, 1), tmp_path)
    y = {"w": np.zeros(2, F)}
    with pytest.raises(ConfigError, match="num_steps is 0; c_i needs at least one local step"):
        cv.update(y, num_steps=0, lr=0.1)
    with pytest.raises(ConfigError, match="num_steps must be an integer"):
        cv.update(y, num_steps=2.0, lr=0.1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="lr must be a finite number > 0"):
        cv.update(y, num_steps=1, lr=float("nan"))
    with pytest.raises(ArrayFormatError, match="lack 'w'"):
        cv.update({}, num_steps=1, lr=0.1)
    with pytest.raises(ArrayFormatError, match=r"not finite \(did training diverge\?\)"):
        cv.update({"w": np.array([np.inf, 0], F)}, num_steps=1, lr=0.1)
    assert not (tmp_path / STATE_FILE).exists()  # nothing saved by a refusal


def test_an_unreadable_c_i_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="cannot read this site's c_i"):
        ControlVariates(_task([1, 2], None, 1), tmp_path)


def test_state_dir_needs_a_running_site() -> None:
    # Outside shoal there is no site (and no init).
    with pytest.raises(ShoalError, match="init"):
        fl.state_dir()
