"""hello-pt site script: train the global model on this site's MNIST part.

``train_plain.py`` beside it is the plain PyTorch script this one came from;
the README shows the few lines that differ. Uses only the Client API, so it
runs unchanged under a site daemon and in ``shoal simulate``. Options
(job.yml ``client.args``): ``--alpha`` (the Dirichlet concentration of the
non-IID split), ``--seed``, ``--steps`` (batches per round, a fresh random
subset of the site's data each round; 0 for all of it), ``--batch-size``,
``--lr``. Trains on CUDA when there is a GPU.
"""

from __future__ import annotations

import argparse
import time
from itertools import islice

import torch
import torch.nn.functional as F
from data import site_shard
from model import build_model, evaluate_model
from torch.utils.data import DataLoader, TensorDataset

import shoal.client as fl
from shoal.frameworks.torch import get_weights, set_weights


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=100, help="batches per pass (0: all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    fl.init()
    info = fl.system_info()
    index, count = info["site_index"], info["num_sites"]
    (x, y), (x_val, y_val) = site_shard(index, count, args.alpha, args.seed)
    print(f"{len(x)} training and {len(x_val)} test images on {device}", flush=True)
    x, y, x_val, y_val = map(torch.from_numpy, (x, y, x_val, y_val))
    shuffle = torch.Generator().manual_seed(args.seed + index)
    loader = DataLoader(TensorDataset(x, y), args.batch_size, shuffle=True, generator=shuffle)
    model = build_model().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    while fl.is_running():
        task = fl.receive()
        set_weights(model, task.params)
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
            f"round {task.current_round}/{task.total_rounds} loss={metrics['loss']:.4f} "
            f"val_accuracy={metrics.get('val_accuracy', float('nan')):.4f} "
            f"({steps} steps, {time.perf_counter() - started:.1f}s)",
            flush=True,
        )
        fl.send(fl.FLModel(params=get_weights(model), metrics=metrics, num_examples=len(x)))


if __name__ == "__main__":
    main()
