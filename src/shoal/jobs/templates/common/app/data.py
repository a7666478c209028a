"""__JOB_NAME__'s data: a small seeded classification task, and each site's shard.

Numpy only and made on the spot, so the job runs anywhere in seconds. To train
on real data, change ``site_data`` to load this site's own examples (the
returned arrays are all the rest of the job needs) and ``test_data`` to load
what the server evaluates on.
"""

from __future__ import annotations

import numpy as np

#: Features per example.
FEATURES = 16
#: Number of classes (labels are 0..CLASSES-1).
CLASSES = 3
#: Examples shared out among the sites, and held out for the server.
TRAIN_EXAMPLES = 3000
TEST_EXAMPLES = 1000
#: Fixes the task: every site and the server draw from the same classes.
SEED = 2024


def make_examples(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` examples ``(x, y)``: float32 features, int64 labels; the same for the same seed."""
    centres = np.random.default_rng(SEED).normal(size=(CLASSES, FEATURES))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, size=n)
    x = centres[y] + rng.normal(scale=1.5, size=(n, FEATURES))
    return x.astype(np.float32), y.astype(np.int64)


def site_data(site_index: int, num_sites: int) -> tuple[np.ndarray, np.ndarray]:
    """Site ``site_index``'s own share of the training examples (disjoint from
    every other site's), ``0 <= site_index < num_sites``."""
    if not 0 <= site_index < num_sites:
        raise ValueError(f"site_index {site_index} is not in [0, {num_sites})")
    x, y = make_examples(TRAIN_EXAMPLES, seed=SEED + 1)
    # The same permutation on every site, so the shards do not overlap.
    order = np.random.default_rng(SEED + 2).permutation(TRAIN_EXAMPLES)
    mine = np.sort(order[site_index::num_sites])
    return x[mine], y[mine]


def test_data() -> tuple[np.ndarray, np.ndarray]:
    """Examples no site trains on: what the server evaluates the global model on."""
    return make_examples(TEST_EXAMPLES, seed=SEED + 3)
