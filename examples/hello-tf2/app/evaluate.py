"""Server-side evaluation of each new global model on the whole MNIST test set."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
from data import load_mnist
from model import build_model

from shoal.frameworks.keras import set_weights

_lock = threading.Lock()
_model: list[Any] = []  # built once, on first use


def evaluate(params: Mapping[str, np.ndarray], round: int) -> dict[str, float]:
    """``{"accuracy", "loss"}`` of the global model ``params`` after ``round``."""
    with _lock:
        if not _model:
            _model.append(build_model())
        model = _model[0]
        set_weights(model, params)
        _, (x_test, y_test) = load_mnist()
        loss, accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    return {"accuracy": float(accuracy), "loss": float(loss)}
