"""FedProx's proximal term for Keras: the tensor for a custom loop (its
gradient against numbers computed by hand) and the callback for ``fit`` (one
SGD step computed by hand)."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from shoal.client.model import FLModel  # noqa: E402
from shoal.errors import ArrayFormatError, ConfigError  # noqa: E402
from shoal.frameworks.keras import ProximalTerm, get_weights, proximal_term  # noqa: E402


def _dense(kernel: list[float], bias: float) -> keras.Model:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.layers[0].set_weights([np.array([[k] for k in kernel], np.float32), np.array([bias])])
    return model


def _task(kernel: list[float], bias: float, mu: float) -> FLModel:
    return FLModel(params=get_weights(_dense(kernel, bias)), meta={"fedprox_mu": mu})


def test_value_and_gradient_by_hand() -> None:
    # kernel (1, 2), bias 0.5; global kernel (0, 1), bias 1.5; mu 0.5:
    #   term = 0.25 * (1 + 1 + 1) = 0.75; d/dkernel = 0.5 * (1, 1); d/dbias = -0.5
    model = _dense([1.0, 2.0], 0.5)
    task = _task([0.0, 1.0], 1.5, mu=0.5)
    with tf.GradientTape() as tape:
        term = proximal_term(model, task)
    kernel_grad, bias_grad = tape.gradient(term, model.trainable_variables)
    assert float(term) == 0.75
    np.testing.assert_array_equal(np.asarray(kernel_grad), [[0.5], [0.5]])
    np.testing.assert_array_equal(np.asarray(bias_grad), [-0.5])
    assert float(proximal_term(model, task.params, mu=2.0)) == 3.0
    # A new round's weights are copied in; the model's anchor variables are reused.
    assert float(proximal_term(model, _task([1.0, 2.0], 0.5, mu=1.0))) == 0.0


def test_fit_with_the_callback_takes_one_step_computed_by_hand() -> None:
    # x = 0, so the loss mse(y=0, bias) = bias**2 moves only the bias:
    #   kernel: 1 - lr * mu * (1 - 0) = 1 - 0.1 * 2 * 1 = 0.8, 2 - 0.2 * (2 - 1) = 1.8
    #   bias:   0.5 - 0.1 * (2 * 0.5 + 2 * (0.5 - 1.5)) = 0.5 - 0.1 * -1 = 0.6
    model = _dense([1.0, 2.0], 0.5)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="mse")
    task = _task([0.0, 1.0], 1.5, mu=2.0)
    x, y = np.zeros((1, 2), np.float32), np.zeros((1, 1), np.float32)
    model.fit(x, y, batch_size=1, epochs=1, verbose=0, callbacks=[ProximalTerm(task)])
    kernel, bias = model.layers[0].get_weights()
    np.testing.assert_allclose(kernel[:, 0], [0.8, 1.8], rtol=1e-6)
    np.testing.assert_allclose(bias, [0.6], rtol=1e-6)
    # Outside fit, mu is 0: evaluate reports the plain loss, 0.6**2.
    assert model.evaluate(x, y, verbose=0) == pytest.approx(0.36, rel=1e-5)
    # The next round: the new task's weights, no second copy of the term.
    nxt = FLModel(params=get_weights(model), meta={"fedprox_mu": 2.0})
    model.fit(x, y, batch_size=1, epochs=1, verbose=0, callbacks=[ProximalTerm(nxt)])
    kernel2, bias2 = model.layers[0].get_weights()
    np.testing.assert_allclose(kernel2, kernel, rtol=1e-6)  # w == w_global: no pull
    np.testing.assert_allclose(bias2, [0.6 - 0.1 * 2 * 0.6], rtol=1e-6)


def test_a_model_fitted_before_gets_the_term_too() -> None:
    model = _dense([1.0, 2.0], 0.5)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="mse")
    x, y = np.zeros((1, 2), np.float32), np.zeros((1, 1), np.float32)
    model.fit(x, y, batch_size=1, epochs=1, verbose=0)  # traced without the term
    before = model.layers[0].get_weights()[0][:, 0].copy()
    task = _task([0.0, 0.0], 0.0, mu=1.0)
    model.fit(x, y, batch_size=1, epochs=1, verbose=0, callbacks=[ProximalTerm(task)])
    # kernel - 0.1 * 1 * (kernel - 0): the term reached the retraced function.
    np.testing.assert_allclose(model.layers[0].get_weights()[0][:, 0], before * 0.9, rtol=1e-6)


def test_inside_a_tf_function_it_refuses_and_names_the_way_out() -> None:
    model = _dense([1.0, 2.0], 0.5)
    task = _task([0.0, 1.0], 1.5, mu=0.5)

    @tf.function
    def step() -> object:
        return proximal_term(model, task)

    with pytest.raises(ConfigError, match="inside a tf.function.*ProximalTerm"):
        step()


def test_a_missing_weight_or_mu_is_named() -> None:
    model = _dense([1.0, 2.0], 0.5)
    with pytest.raises(ArrayFormatError, match="the global weights have no 'layers.0.1.bias'"):
        proximal_term(model, {"layers.0.0.kernel": np.zeros((2, 1))}, mu=1.0)
    with pytest.raises(ConfigError, match="no 'fedprox_mu'"):
        ProximalTerm(FLModel(params=get_weights(model)))
