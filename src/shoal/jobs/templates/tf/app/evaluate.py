"""__JOB_NAME__'s server-side evaluation (job.yml ``server.evaluate``)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from data import test_data
from model import build_model

from shoal.frameworks.keras import set_weights


def evaluate(params: Mapping[str, np.ndarray], round: int) -> dict[str, float]:
    """The new global model's ``loss`` and ``accuracy`` on the held-out examples."""
    model = build_model()
    set_weights(model, params)
    x, y = test_data()
    loss, accuracy = model.evaluate(x, y, batch_size=256, verbose=0)
    return {"loss": float(loss), "accuracy": float(accuracy)}
