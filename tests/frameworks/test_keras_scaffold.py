"""SCAFFOLD's Keras helper (``shoal.frameworks.keras.ScaffoldCorrection``) by
hand, through ``model.fit``: the correction goes into every gradient the
optimizer applies, for the trainable floating weights only, with each
round's values (the training function is traced once), and is gone after
``result()``.

Model: ``Dense(1)`` on 2 inputs, then a frozen ``Dense(1)`` of kernel 1;
loss: the output itself, on the one example ``[1, 2]``: the gradient is
``kernel [[1], [2]], bias [1]`` whatever the weights. The numbers are those
of tests/frameworks/test_torch_scaffold.py: round 2 from zeros, c =
``[[0.5], [0.5]], [0]``, c_i kept ``[[1], [0]], [2]``, two SGD steps of lr
0.5 give ``kernel [[-0.5], [-2.5]], bias [1]``; delta c_i = ``[[0], [2]], [-1]``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")

from shoal.arrays import load_arrays, save_arrays  # noqa: E402
from shoal.client import FLModel  # noqa: E402
from shoal.client.scaffold import STATE_FILE  # noqa: E402
from shoal.errors import ConfigError  # noqa: E402
from shoal.frameworks.keras import ScaffoldCorrection, get_weights, set_weights  # noqa: E402

F = np.float32
X = np.array([[1, 2]], F)
Y = np.zeros((1, 1), F)
K, B = "layers.0.0.kernel", "layers.0.1.bias"


def _model(lr: float) -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(1),
            keras.layers.Dense(1, use_bias=False, kernel_initializer="ones", trainable=False),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=lr),
        loss=lambda y_true, y_pred: keras.ops.sum(y_pred, axis=-1),
    )
    return model


def _start(model: keras.Model) -> dict[str, np.ndarray]:
    x = get_weights(model)
    x[K], x[B] = np.zeros((2, 1), F), np.zeros(1, F)
    set_weights(model, x)
    return x


def test_fit_by_hand_over_two_rounds(tmp_path: Path) -> None:
    save_arrays(
        tmp_path / STATE_FILE,
        {K: np.array([[1], [0]], F), B: np.array([2], F)},
        {"round": "1"},
    )
    model = _model(0.5)
    x = _start(model)
    c = {f"c/{K}": np.array([[0.5], [0.5]], F), f"c/{B}": np.zeros(1, F)}
    scaffold = ScaffoldCorrection(model, FLModel(params=x, extras=c, current_round=2), tmp_path)
    # Trainable floating weights only: not the frozen kernel.
    assert scaffold.variates.names == [K, B]
    model.fit(X.repeat(2, axis=0), Y.repeat(2, axis=0), batch_size=1, epochs=1, verbose=0)
    assert scaffold.steps == 2
    w = get_weights(model)
    np.testing.assert_array_equal(w[K], [[-0.5], [-2.5]])
    np.testing.assert_array_equal(w[B], [1])
    extras = scaffold.result()  # lr from the optimizer, K from its steps
    np.testing.assert_array_equal(extras[f"delta_c/{K}"], np.array([[0], [2]], F))
    np.testing.assert_array_equal(extras[f"delta_c/{B}"], np.array([-1], F))
    kept = load_arrays(tmp_path / STATE_FILE)
    np.testing.assert_array_equal(kept[K], np.array([[1], [2]], F))

    # Round 3, same model and optimizer: the traced step reads this round's
    # correction, c - c_i = [[1], [1]] - [[1], [2]] = [[0], [-1]], [1] - [1] = [0].
    x3 = get_weights(model)
    c3 = {f"c/{K}": np.ones((2, 1), F), f"c/{B}": np.ones(1, F)}
    scaffold = ScaffoldCorrection(model, FLModel(params=x3, extras=c3, current_round=3), tmp_path)
    model.fit(X, Y, batch_size=1, epochs=1, verbose=0)
    w = get_weights(model)
    # One step of lr 0.5 on [[1], [1]], [1].
    np.testing.assert_array_equal(w[K], [[-1], [-3]])
    np.testing.assert_array_equal(w[B], [0.5])
    extras = scaffold.result(lr=0.5, num_steps=1)
    np.testing.assert_array_equal(extras[f"delta_c/{K}"], np.zeros((2, 1), F))

    # After result() the correction is zero: plain SGD again.
    model.fit(X, Y, batch_size=1, epochs=1, verbose=0)
    np.testing.assert_array_equal(get_weights(model)[K], [[-1.5], [-4]])


def test_a_training_function_traced_before_is_traced_again(tmp_path: Path) -> None:
    model = _model(1.0)
    x = _start(model)
    model.fit(X, Y, batch_size=1, epochs=1, verbose=0)  # traced without the hook
    x = _start(model)
    c = {f"c/{K}": np.array([[0.5], [0.5]], F), f"c/{B}": np.zeros(1, F)}
    ScaffoldCorrection(model, FLModel(params=x, extras=c, current_round=1), tmp_path)
    model.fit(X, Y, batch_size=1, epochs=1, verbose=0)
    np.testing.assert_array_equal(get_weights(model)[K], [[-1.5], [-2.5]])


def test_an_uncompiled_model_is_refused(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ConfigError, match="compile the Keras model"):
        ScaffoldCorrection(model, FLModel(params=get_weights(model)), tmp_path)
