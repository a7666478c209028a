"""A linear model ``y = x @ w + b`` and the synthetic task it learns.

Every site draws its own samples (seeded by its index) from the same true
line, so averaging the sites' models converges to the truth.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

#: Number of input features.
FEATURES = 4
#: The line the data comes from (fixed, so every site and the server agree).
TRUE_W = np.array([2.0, -3.0, 0.5, 1.0])
TRUE_B = 0.25


def initial_weights() -> dict[str, np.ndarray]:
    """Server hook: the first global model."""
    return {"w": np.zeros(FEATURES), "b": np.zeros(1)}


def make_data(seed: int, n: int, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples ``(x, y)`` drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES))
    y = x @ TRUE_W + TRUE_B + rng.normal(scale=noise, size=n)
    return x, y


def mse(params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    pred = x @ np.asarray(params["w"]) + np.asarray(params["b"])[0]
    return float(np.mean((pred - y) ** 2))


def evaluate(params: Mapping[str, np.ndarray], round: int) -> dict[str, float]:
    """Server hook: the global model's loss on held-out data."""
    x, y = make_data(seed=10**6, n=1000)
    return {"loss": mse(params, x, y), "weight_error": float(np.abs(params["w"] - TRUE_W).max())}
