"""A small MLP for MNIST: Opacus computes per-example gradients of Linear
layers natively (no BatchNorm, which mixes examples and DP-SGD forbids)."""

from __future__ import annotations

import torch
from torch import nn


def build_model(seed: int = 0) -> nn.Module:
    """The same initial weights on the server and every site."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())
