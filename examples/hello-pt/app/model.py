"""The network both sides build: the server for the initial weights, the
evaluation hook and the final saved model (``global_final.pt``), each site
for training."""

from __future__ import annotations

import torch
from torch import nn


class Net(nn.Module):
    """Two 3x3 convolutions (16 and 32 channels, each with batch norm, ReLU
    and 2x2 max-pooling), then Linear(1568, 64) -> ReLU -> Linear(64, 10)
    logits. 106 k parameters; the batch-norm running statistics travel with
    the weights (they are in ``state_dict()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, 28, 28) images or (N, 1, 28, 28): add the channel axis if missing.
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return self.classifier(self.features(x))


def build_model(seed: int = 0) -> Net:
    """The job's ``server.model`` hook: a :class:`Net` initialised from
    ``seed``, so that every run of the job starts from the same weights."""
    # fork_rng: seed the initialisation without changing the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Net()


@torch.no_grad()
def evaluate_model(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000
) -> dict[str, float]:
    """``{"accuracy", "loss"}`` of ``model`` on images ``x`` and labels ``y``
    (mean cross-entropy), in eval mode and on the model's device; ``{}`` when
    there are no images (a site whose skewed share of the test set is empty)."""
    if len(x) == 0:
        return {}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct, loss = 0, 0.0
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device)
        yb = y[start : start + batch_size].to(device)
        logits = model(xb)
        loss += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(dim=1) == yb).sum())
    model.train(was_training)
    return {"accuracy": correct / len(x), "loss": loss / len(x)}
