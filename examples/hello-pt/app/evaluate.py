"""Server-side evaluation of each new global model on the whole MNIST test set."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np
import torch
from data import load_mnist
from model import Net, build_model, evaluate_model

from shoal.frameworks.torch import set_weights

_lock = threading.Lock()
_model: list[Net] = []  # built once, on first use


def evaluate(params: Mapping[str, np.ndarray], round: int) -> dict[str, float]:
    """``{"accuracy", "loss"}`` of the global model ``params`` after ``round``."""
    with _lock:
        if not _model:
            _model.append(build_model())
        model = _model[0]
        set_weights(model, params)
        _, (x_test, y_test) = load_mnist()
        return evaluate_model(model, torch.from_numpy(x_test), torch.from_numpy(y_test))
