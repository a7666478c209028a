"""MNIST from the .npz at SHOAL_MNIST_PATH, split IID across the sites."""

from __future__ import annotations

import os
import threading
from functools import lru_cache

import numpy as np

_lock = threading.Lock()


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    path = os.environ.get("SHOAL_MNIST_PATH")
    if not path:
        raise RuntimeError("hello-pt-dp reads MNIST from SHOAL_MNIST_PATH (an mnist.npz)")
    with np.load(path) as f:
        x, y, xt, yt = f["x_train"], f["y_train"], f["x_test"], f["y_test"]
    scale = np.float32(1 / 255.0)
    return (
        x.reshape(-1, 784).astype(np.float32) * scale,
        y.astype(np.int64),
        xt.reshape(-1, 784).astype(np.float32) * scale,
        yt.astype(np.int64),
    )


def site_shard(index: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """This site's training images and labels (a fixed IID share)."""
    with _lock:  # simulated sites may be threads of one process
        x, y, _, _ = _load()
    part = np.array_split(np.random.default_rng(0).permutation(len(y)), count)[index]
    return x[part], y[part]


def test_set() -> tuple[np.ndarray, np.ndarray]:
    with _lock:
        _, _, xt, yt = _load()
    return xt, yt
