"""__JOB_NAME__'s server-side evaluation (job.yml ``server.evaluate``)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from data import test_data
from model import evaluate_on


def evaluate(params: Mapping[str, np.ndarray], round: int) -> dict[str, float]:
    """The new global model's ``loss`` and ``accuracy`` on the held-out examples."""
    x, y = test_data()
    return evaluate_on(params, x, y)
