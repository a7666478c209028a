"""__JOB_NAME__'s model: softmax regression in plain numpy.

The server calls ``build_model`` (job.yml ``server.model``) for the first
global model; each site builds the same model and trains it. A model is a
``dict`` of named arrays, which is also what travels to and from the server.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from data import CLASSES, FEATURES

Model = dict[str, np.ndarray]


def build_model() -> Model:
    """Weights ``w`` (features x classes) and biases ``b``, all zero."""
    return {
        "w": np.zeros((FEATURES, CLASSES), dtype=np.float32),
        "b": np.zeros(CLASSES, dtype=np.float32),
    }


def _probabilities(model: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    logits = x @ model["w"] + model["b"]
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def train(
    model: Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> None:
    """Mini-batch gradient descent on the cross-entropy, updating ``model`` in place."""
    rng = np.random.default_rng(seed)
    onehot = np.eye(CLASSES, dtype=np.float32)[y]
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y), batch_size):
            batch = order[start : start + batch_size]
            error = _probabilities(model, x[batch]) - onehot[batch]
            model["w"] -= lr * (x[batch].T @ error / len(batch)).astype(np.float32)
            model["b"] -= lr * error.mean(axis=0).astype(np.float32)


def evaluate_on(model: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """``{"loss", "accuracy"}`` of ``model`` on ``(x, y)``."""
    p = _probabilities(model, x)
    loss = -np.log(p[np.arange(len(y)), y] + 1e-12).mean()
    return {"loss": float(loss), "accuracy": float((p.argmax(axis=1) == y).mean())}
