"""MNIST, scaled to [0, 1], and each site's non-IID part of it.

The data comes from the ``.npz`` named by ``SHOAL_MNIST_PATH`` when that is
set (machines without internet; the same switch as hello-tf2), else it is
downloaded by ``torchvision.datasets.MNIST`` into ``HELLO_PT_DATA_DIR``
(default ``~/.cache/shoal/hello-pt``). torchvision is imported only then.

Sites get different label mixes: for each class, the shares of the sites are
drawn from a Dirichlet(alpha) distribution, seeded, so every site computes the
same split and no two sites share an image. Small ``alpha`` (0.1) gives each
site a few dominant classes; large ``alpha`` (100) is close to an even, IID
split. Each site's test part has the same label mix as its training part.
This module needs only numpy.
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

#: Environment variable naming a local copy of Keras's ``mnist.npz``.
MNIST_ENV = "SHOAL_MNIST_PATH"
#: Where torchvision downloads MNIST when ``SHOAL_MNIST_PATH`` is not set.
DATA_DIR_ENV = "HELLO_PT_DATA_DIR"

NUM_CLASSES = 10

Split = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

_lock = threading.Lock()


def _read_npz(path: str) -> Split:
    with np.load(path) as f:
        return (f["x_train"], f["y_train"]), (f["x_test"], f["y_test"])


def _download() -> Split:
    # Only here: a machine that reads the .npz needs no torchvision.
    import fcntl

    from torchvision.datasets import MNIST

    root = Path(os.environ.get(DATA_DIR_ENV) or Path.home() / ".cache" / "shoal" / "hello-pt")
    root.mkdir(parents=True, exist_ok=True)
    # Sites of a POC federation on one host are separate processes: one downloads,
    # the others wait and then find the files there.
    with open(root / ".download.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        train = MNIST(str(root), train=True, download=True)
        test = MNIST(str(root), train=False, download=True)
    return (train.data.numpy(), train.targets.numpy()), (test.data.numpy(), test.targets.numpy())


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
            (x_tr, y_tr), (x_te, y_te) = _download()
        except Exception as exc:
            raise RuntimeError(
                f"cannot load MNIST: {MNIST_ENV} is not set and the torchvision download "
                f"failed ({type(exc).__name__}: {exc}); install torchvision, or set "
                f"{MNIST_ENV} to a local mnist.npz"
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


def label_shares(
    labels: np.ndarray, num_sites: int, alpha: float, seed: int = 0, min_size: int = 10
) -> np.ndarray:
    """``(NUM_CLASSES, num_sites)`` shares, each row from Dirichlet(alpha),
    redrawn (from the same seeded stream) until every site would get at least
    ``min_size`` of ``labels``."""
    if not alpha > 0 or not np.isfinite(alpha):
        raise ValueError(f"alpha must be a positive number, got {alpha}")
    if num_sites < 1:
        raise ValueError(f"num_sites must be at least 1, got {num_sites}")
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        shares = rng.dirichlet(np.full(num_sites, float(alpha)), size=NUM_CLASSES)
        if np.diff(_cuts(counts, shares), axis=1).sum(axis=0).min() >= min_size:
            return shares
    raise ValueError(
        f"no Dirichlet({alpha}) split of {len(labels)} examples gives each of "
        f"{num_sites} sites {min_size} examples; raise alpha or use fewer sites"
    )


def _cuts(counts: np.ndarray, shares: np.ndarray) -> np.ndarray:
    # Per class, the boundaries of each site's run: (classes, sites + 1).
    edges = np.concatenate([np.zeros((len(shares), 1)), np.cumsum(shares, axis=1)], axis=1)
    edges[:, -1] = 1.0  # no example lost to rounding
    return np.round(edges * counts[:, None]).astype(np.int64)


def split_by_shares(labels: np.ndarray, shares: np.ndarray, seed: int = 0) -> list[np.ndarray]:
    """Each site's sorted indices into ``labels``: class ``c`` is shuffled
    (seeded) and cut by ``shares[c]``. The parts are disjoint and cover ``labels``."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    cuts = _cuts(counts, shares)
    parts: list[list[np.ndarray]] = [[] for _ in range(shares.shape[1])]
    for c in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == c))
        for site in range(shares.shape[1]):
            parts[site].append(members[cuts[c, site] : cuts[c, site + 1]])
    return [np.sort(np.concatenate(p)) for p in parts]


def dirichlet_split(
    labels: np.ndarray, num_sites: int, alpha: float, seed: int = 0
) -> list[np.ndarray]:
    """``labels`` split across ``num_sites`` by Dirichlet(alpha) label shares.

    >>> parts = dirichlet_split(y_train, num_sites=2, alpha=0.5, seed=0)
    >>> [len(p) for p in parts]          # disjoint, together all of y_train
    """
    return split_by_shares(labels, label_shares(labels, num_sites, alpha, seed), seed)


def site_shard(site_index: int, num_sites: int, alpha: float = 0.5, seed: int = 0) -> Split:
    """Site ``site_index``'s part of the training set and, with the same
    label shares, of the test set."""
    if not 0 <= site_index < num_sites:
        raise ValueError(f"site_index {site_index} is not in [0, {num_sites})")
    (x_tr, y_tr), (x_te, y_te) = load_mnist()
    shares = label_shares(y_tr, num_sites, alpha, seed)
    tr = split_by_shares(y_tr, shares, seed)[site_index]
    te = split_by_shares(y_te, shares, seed + 1)[site_index]
    return (x_tr[tr], y_tr[tr]), (x_te[te], y_te[te])
