"""Server hook: the global model's accuracy on MNIST's 10,000 test images."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from data import test_set
from model import accuracy, build_model

from shoal.frameworks.torch import set_weights


def evaluate(params: Mapping[str, np.ndarray], round: int) -> dict[str, float]:
    model = build_model()
    set_weights(model, params)
    x, y = test_set()
    return {"accuracy": accuracy(model, torch.from_numpy(x), torch.from_numpy(y))}
