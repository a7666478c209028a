"""hello-numpy site script: a few steps of gradient descent per round.

It answers the three tasks shoal's workflows send (docs/client-api.md):
``train`` (gradient descent from the given model), ``validate`` (the given
model's loss on this site's data, no weights back) and ``submit_model``
(this site's last trained model, for cross-site evaluation).

Options: ``--steps`` (per round), ``--lr``, ``--samples`` (this site's data size).
"""

from __future__ import annotations

import argparse

import numpy as np
from model import make_data, mse

import shoal.client as fl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args()

    fl.init()
    info = fl.system_info()
    index = info["site_index"]
    x, y = make_data(seed=index, n=args.samples)
    print(f"{len(y)} samples, {args.steps} steps per round", flush=True)
    local = None  # this site's last trained model
    while fl.is_running():
        task = fl.receive()
        if fl.is_evaluate():
            fl.send(fl.FLModel(metrics={"loss": mse(task.params, x, y)}, num_examples=len(y)))
            continue
        if fl.is_submit_model() and local is not None:
            fl.send(
                fl.FLModel(params=local, metrics={"loss": mse(local, x, y)}, num_examples=len(y))
            )
            continue
        # "train", or "submit_model" at a site that never trained: train the given model.
        w = np.array(task.params["w"], dtype=np.float64)
        b = np.array(task.params["b"], dtype=np.float64)
        for _ in range(args.steps):
            err = x @ w + b[0] - y
            w -= args.lr * 2 * x.T @ err / len(y)
            b -= args.lr * 2 * err.mean()
        local = {"w": w, "b": b}
        fl.send(fl.FLModel(params=local, metrics={"loss": mse(local, x, y)}, num_examples=len(y)))


if __name__ == "__main__":
    main()
