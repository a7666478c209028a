"""Keras weights under stable, position-based names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")

from shoal.errors import ArrayFormatError  # noqa: E402
from shoal.frameworks import adapter_for  # noqa: E402
from shoal.frameworks.keras import KerasAdapter, get_weights, set_weights  # noqa: E402


def _build() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((28, 28)),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(10),
        ]
    )


def test_names_are_stable_across_models_built_in_one_process() -> None:
    first, second = _build(), _build()
    # Keras numbers layers per process, so the two models' own names differ...
    assert [layer.name for layer in first.layers] != [layer.name for layer in second.layers]
    # ...but shoal's names do not.
    names = list(get_weights(first))
    assert names == list(get_weights(second))
    assert names == [
        "layers.1.0.kernel",
        "layers.1.1.bias",
        "layers.3.0.gamma",
        "layers.3.1.beta",
        "layers.3.2.moving_mean",
        "layers.3.3.moving_variance",
        "layers.4.0.kernel",
        "layers.4.1.bias",
    ]


def test_names_are_stable_in_another_process(tmp_path: Path) -> None:
    # Build a few unrelated models first so Keras's counters differ.
    code = (
        "import keras, json, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_keras_adapter import _build\n"
        "from shoal.frameworks.keras import get_weights\n"
        "[keras.layers.Dense(3) for _ in range(5)]\n"
        "print(json.dumps(list(get_weights(_build()))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert out.stdout.strip().splitlines()[-1] == str(list(get_weights(_build()))).replace("'", '"')


def test_round_trip_includes_non_trainable_weights() -> None:
    source, target = _build(), _build()
    params = get_weights(source)
    params = {name: value + np.float32(0.5) for name, value in params.items()}
    set_weights(target, params)
    back = get_weights(target)
    assert back.keys() == params.keys()
    for name in params:
        np.testing.assert_array_equal(back[name], params[name])
    # Moving statistics are federated too.
    np.testing.assert_array_equal(back["layers.3.2.moving_mean"], np.full(16, 0.5, np.float32))


def test_get_weights_returns_copies() -> None:
    model = _build()
    params = get_weights(model)
    params["layers.1.1.bias"][:] = 7.0
    assert not np.any(get_weights(model)["layers.1.1.bias"] == 7.0)


def test_set_weights_casts_dtype_and_accepts_read_only_arrays() -> None:
    model = _build()
    params = {n: v.astype(np.float64) for n, v in get_weights(model).items()}
    for value in params.values():
        value.flags.writeable = False
    set_weights(model, params)
    assert get_weights(model)["layers.1.0.kernel"].dtype == np.float32


def test_missing_and_unexpected_names_are_reported() -> None:
    model = _build()
    params = get_weights(model)
    del params["layers.4.1.bias"]
    params["dense_7/bias"] = np.zeros(10, np.float32)
    with pytest.raises(
        ArrayFormatError, match=r"missing 'layers\.4\.1\.bias'.*unexpected 'dense_7/bias'"
    ):
        set_weights(model, params)


def test_shape_mismatch_is_reported_and_nothing_is_assigned() -> None:
    model = _build()
    before = get_weights(model)
    params = {n: np.ones_like(v) for n, v in before.items()}
    params["layers.4.0.kernel"] = np.zeros((16, 9), np.float32)
    with pytest.raises(ArrayFormatError, match=r"'layers\.4\.0\.kernel': shape \(16, 9\) differs"):
        set_weights(model, params)
    np.testing.assert_array_equal(get_weights(model)["layers.1.1.bias"], before["layers.1.1.bias"])


def test_unbuilt_model_is_refused_clearly() -> None:
    model = keras.Sequential([keras.layers.Dense(3)])
    with pytest.raises(ArrayFormatError, match="no weights yet"):
        set_weights(model, {"layers.0.0.kernel": np.zeros((2, 3), np.float32)})


def test_adapter_for_keras_and_save(tmp_path: Path) -> None:
    model = _build()
    model.compile(optimizer="adam", loss="mse")
    adapter = adapter_for(model)
    assert isinstance(adapter, KerasAdapter)
    assert (adapter.name, adapter.suffix) == ("keras", ".keras")
    path = tmp_path / f"model{adapter.suffix}"
    adapter.save(model, path)
    loaded = keras.models.load_model(path, compile=False)
    for name, value in get_weights(model).items():
        np.testing.assert_array_equal(get_weights(loaded)[name], value)
