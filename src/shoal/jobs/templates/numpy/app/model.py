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
    correction: Mapping[str, np.ndarray] | None = None,
    anchor: Mapping[str, np.ndarray] | None = None,
    mu: float = 0.0,
) -> int:
    """Mini-batch gradient descent on the cross-entropy, updating ``model`` in
    place; returns the steps taken. ``correction`` is added to each step's
    gradient (SCAFFOLD's ``c - c_i``); ``mu`` and ``anchor`` add FedProx's
    proximal term ``(mu/2) |w - anchor|^2`` to the loss."""
    rng = np.random.default_rng(seed)
    onehot = np.eye(CLASSES, dtype=np.float32)[y]
    steps = 0
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y), batch_size):
            batch = order[start : start + batch_size]
            error = _probabilities(model, x[batch]) - onehot[batch]
            grads = {"w": x[batch].T @ error / len(batch), "b": error.mean(axis=0)}
            for name, grad in grads.items():
                if anchor is not None and mu:
                    grad += mu * (model[name] - anchor[name])
                if correction is not None:
                    grad += correction[name]
                model[name] -= (lr * grad).astype(np.float32)
            steps += 1
    return steps


def evaluate_on(model: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """``{"loss", "accuracy"}`` of ``model`` on ``(x, y)``."""
    p = _probabilities(model, x)
    loss = -np.log(p[np.arange(len(y)), y] + 1e-12).mean()
    return {"loss": float(loss), "accuracy": float((p.argmax(axis=1) == y).mean())}
