"""The plain PyTorch script ``train.py`` came from: the same network and
training loop on all of MNIST in one process, no federation. It is also the
centralised baseline the README compares the federated accuracy with.

    SHOAL_MNIST_PATH=/path/to/mnist.npz python examples/hello-pt/app/train_plain.py

Options: ``--epochs``, ``--seed``, ``--steps`` (batches per epoch, a fresh
random subset each epoch; 0 for all of it), ``--batch-size``, ``--lr``.
Saves the model's ``state_dict()`` as ``model.pt`` in the current folder.
"""

from __future__ import annotations

import argparse
import time
from itertools import islice

import torch
import torch.nn.functional as F
from data import load_mnist
from model import build_model, evaluate_model
from torch.utils.data import DataLoader, TensorDataset


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=100, help="batches per pass (0: all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    (x, y), (x_val, y_val) = load_mnist()
    print(f"{len(x)} training and {len(x_val)} test images on {device}", flush=True)
    x, y, x_val, y_val = map(torch.from_numpy, (x, y, x_val, y_val))
    shuffle = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(TensorDataset(x, y), args.batch_size, shuffle=True, generator=shuffle)
    model = build_model().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    for epoch in range(args.epochs):
        started = time.perf_counter()
        model.train()
        steps, total = 0, 0.0
        for xb, yb in islice(loader, args.steps or None):
            xb, yb = xb.to(device), yb.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            steps, total = steps + 1, total + loss.item()
        val = evaluate_model(model, x_val, y_val)
        metrics = {"loss": total / steps, **{f"val_{k}": v for k, v in val.items()}}
        print(
            f"epoch {epoch + 1}/{args.epochs} loss={metrics['loss']:.4f} "
            f"val_accuracy={metrics.get('val_accuracy', float('nan')):.4f} "
            f"({steps} steps, {time.perf_counter() - started:.1f}s)",
            flush=True,
        )
    torch.save(model.state_dict(), "model.pt")


if __name__ == "__main__":
    main()
