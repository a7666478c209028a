"""__JOB_NAME__'s model: a small PyTorch MLP classifier.

The server calls ``build_model`` (job.yml ``server.model``) for the first
global model and saves the final one in PyTorch's format; each site builds
the same model and trains it.
"""

from __future__ import annotations

import torch
from data import CLASSES, FEATURES
from torch import nn

#: Units of the hidden layer.
HIDDEN = 32


def build_model() -> nn.Module:
    """Linear(FEATURES, HIDDEN) -> ReLU -> Linear(HIDDEN, CLASSES) logits."""
    return nn.Sequential(
        nn.Linear(FEATURES, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, CLASSES),
    )


@torch.no_grad()
def evaluate_on(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """``{"loss", "accuracy"}`` of ``model`` on ``(x, y)``."""
    model.eval()
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y)
    accuracy = (logits.argmax(dim=1) == y).float().mean()
    return {"loss": float(loss), "accuracy": float(accuracy)}
