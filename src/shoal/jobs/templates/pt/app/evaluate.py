"""__JOB_NAME__'s server-side evaluation (job.yml ``server.evaluate``)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from data import test_data
from model import build_model, evaluate_on

from shoal.frameworks.torch import set_weights


def evaluate(params: Mapping[str, np.ndarray], round: int) -> dict[str, float]:
    """The new global model's ``loss`` and ``accuracy`` on the held-out examples."""
    model = build_model()
    set_weights(model, params)
    x, y = test_data()
    return evaluate_on(model, torch.from_numpy(x), torch.from_numpy(y))
