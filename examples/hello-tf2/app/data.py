"""MNIST, scaled to [0, 1], and each site's disjoint shard of it.

The data comes from the ``.npz`` named by ``SHOAL_MNIST_PATH`` when that is
set (machines without internet), else from ``keras.datasets.mnist``.
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache

import numpy as np

#: Environment variable naming a local copy of Keras's ``mnist.npz``.
MNIST_ENV = "SHOAL_MNIST_PATH"

Split = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

_lock = threading.Lock()


def _read_npz(path: str) -> Split:
    with np.load(path) as f:
        return (f["x_train"], f["y_train"]), (f["x_test"], f["y_test"])


@lru_cache(maxsize=1)
def _load_cached() -> Split:
    path = os.environ.get(MNIST_ENV)
    if path:
        try:
            (x_tr, y_tr), (x_te, y_te) = _read_npz(path)
        except (OSError, KeyError, ValueError) as exc:
            raise RuntimeError(f"cannot read MNIST from {MNIST_ENV}={path}: {exc}") from exc
    else:
        try:
            import keras

            (x_tr, y_tr), (x_te, y_te) = keras.datasets.mnist.load_data()
        except Exception as exc:
            raise RuntimeError(
                f"cannot load MNIST: {MNIST_ENV} is not set and "
                f"keras.datasets.mnist.load_data() failed ({exc}); set {MNIST_ENV} "
                "to a local mnist.npz"
            ) from exc
    scale = np.float32(1 / 255.0)
    return (
        (x_tr.astype(np.float32) * scale, y_tr.astype(np.int64)),
        (x_te.astype(np.float32) * scale, y_te.astype(np.int64)),
    )


def load_mnist() -> Split:
    """``((x_train, y_train), (x_test, y_test))``, pixels in [0, 1]; loaded once per process."""
    with _lock:  # the simulator may run several sites as threads of one process
        return _load_cached()


def parse_split(split: str, num_sites: int) -> np.ndarray:
    """Each site's fraction of the data: ``"even"`` or weights like ``"0.7,0.3"``."""
    if split == "even":
        return np.full(num_sites, 1.0 / num_sites)
    try:
        weights = np.array([float(w) for w in split.split(",")])
    except ValueError:
        raise ValueError(f"split {split!r}: expected 'even' or comma-separated weights") from None
    if len(weights) != num_sites or np.any(weights <= 0):
        raise ValueError(f"split {split!r}: expected {num_sites} positive weights, one per site")
    return weights / weights.sum()


def _shard(n: int, fractions: np.ndarray, index: int, seed: int) -> np.ndarray:
    # The same seeded permutation on every site, so the shards are disjoint.
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.round(np.concatenate([[0.0], np.cumsum(fractions)]) * n).astype(int)
    return np.sort(order[bounds[index] : bounds[index + 1]])


def site_shard(site_index: int, num_sites: int, split: str = "even", seed: int = 0) -> Split:
    """Site ``site_index``'s disjoint shard of the training set and of the test set."""
    if not 0 <= site_index < num_sites:
        raise ValueError(f"site_index {site_index} is not in [0, {num_sites})")
    fractions = parse_split(split, num_sites)
    (x_tr, y_tr), (x_te, y_te) = load_mnist()
    tr = _shard(len(x_tr), fractions, site_index, seed)
    te = _shard(len(x_te), fractions, site_index, seed + 1)
    return (x_tr[tr], y_tr[tr]), (x_te[te], y_te[te])
