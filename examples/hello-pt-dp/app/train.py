"""hello-pt-dp site script: DP-SGD (Opacus) on this site's MNIST share.

Opacus's ``PrivacyEngine`` clips every example's gradient to
``--max-grad-norm``, adds Gaussian noise of ``--noise-multiplier`` times
that to each batch's sum, and samples batches by Poisson sampling; its RDP
accountant tracks this site's ε over every step of every round (the same
data each round, so the steps compose). The site sends its ε at
``--delta`` with each result (``dp_sgd_epsilon``): example-level DP for the
examples of this site, towards the server and everyone after it.
"""

from __future__ import annotations

import argparse
import warnings
from itertools import islice

import torch
import torch.nn.functional as F
from data import site_shard
from model import accuracy, build_model
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

import shoal.client as fl
from shoal.frameworks.torch import get_weights, set_weights

# Opacus computes per-example gradients in backward hooks on the layers; the
# first layer's input needs no gradient, and torch says so on every step.
warnings.filterwarnings("ignore", message="Full backward hook is firing")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--noise-multiplier", type=float, default=1.0)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--steps", type=int, default=60, help="batches per round")
    parser.add_argument("--batch-size", type=int, default=64, help="expected batch size")
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    fl.init()
    info = fl.system_info()
    x, y = site_shard(info["site_index"], info["num_sites"])
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    torch.manual_seed(args.seed + info["site_index"])
    model = build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    loader = DataLoader(TensorDataset(x_t, y_t), batch_size=args.batch_size)
    with warnings.catch_warnings():
        # Opacus warns that secure_mode is off (its noise is not from a
        # CSPRNG): fine for the example, said in its README.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant="rdp")
        dp_model, dp_optimizer, dp_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=args.noise_multiplier,
            max_grad_norm=args.max_grad_norm,
        )
    print(f"{len(y)} images, DP-SGD z={args.noise_multiplier} C={args.max_grad_norm}", flush=True)
    while fl.is_running():
        task = fl.receive()
        set_weights(model, task.params)  # dp_model wraps this very module
        dp_model.train()
        total, steps = 0.0, 0
        for xb, yb in islice(dp_loader, args.steps):
            if len(yb) == 0:  # Poisson sampling may draw an empty batch
                continue
            dp_optimizer.zero_grad()
            loss = F.cross_entropy(dp_model(xb), yb)
            loss.backward()
            dp_optimizer.step()
            total, steps = total + loss.item(), steps + 1
        eps = engine.get_epsilon(args.delta)
        metrics = {
            "loss": total / max(steps, 1),
            "train_accuracy": accuracy(model, x_t, y_t),
            "dp_sgd_epsilon": eps,
        }
        print(f"round {task.current_round}: epsilon {eps:.3f} at delta {args.delta}", flush=True)
        fl.send(fl.FLModel(params=get_weights(model), metrics=metrics, num_examples=len(y)))


if __name__ == "__main__":
    main()
