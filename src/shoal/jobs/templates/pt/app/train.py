"""__JOB_NAME__'s site script: train the global model on this site's data.

It uses only the Client API (``shoal.client``), so it runs unchanged in
``shoal simulate`` and under a real site. It answers every task a workflow may
send: ``train``, ``validate`` (evaluate the task's model here) and
``submit_model`` (this site's own model, for cross-site evaluation). Options (job.yml ``client.args``):
``--epochs``, ``--lr``, ``--batch-size``, ``--seed``.
"""

from __future__ import annotations

import argparse

import torch
from data import site_data
from model import build_model, evaluate_on
from torch import nn

import shoal.client as fl
from shoal.frameworks.torch import (
    ScaffoldCorrection,  # [scaffold]
    get_weights,
    proximal_term,  # [fedprox]
    set_weights,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=2, help="local epochs per round")
    parser.add_argument("--lr", type=float, default=0.01, help="learning rate (SGD, momentum 0.9)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    fl.init()
    info = fl.system_info()
    # Each site takes its own shard: site_index is 0..num_sites-1.
    x_np, y_np = site_data(info["site_index"], info["num_sites"])
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    print(f"{info['site_name']}: {len(y)} training examples", flush=True)
    # A generator of its own (not torch.manual_seed): sites may share a process.
    shuffle = torch.Generator().manual_seed(args.seed + info["site_index"])
    model, evaluator = build_model(), build_model()
    loss_fn = nn.CrossEntropyLoss()
    trained = False

    while fl.is_running():
        task = fl.receive()  # this round's global model
        if fl.is_evaluate():
            # "validate": this model's metrics on this site's data; no weights go back.
            set_weights(evaluator, task.params)
            fl.send(fl.FLModel(metrics=evaluate_on(evaluator, x, y), num_examples=len(y)))
            continue
        if fl.is_submit_model() and trained:
            # Cross-site evaluation asks for this site's own model: the last it trained.
            fl.send(fl.FLModel(params=get_weights(model), num_examples=len(y)))
            continue
        set_weights(model, task.params)
        scaffold = ScaffoldCorrection(model, task, fl.state_dir())  # [scaffold]
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
        model.train()
        for _ in range(args.epochs):
            order = torch.randperm(len(y), generator=shuffle)
            for start in range(0, len(y), args.batch_size):
                batch = order[start : start + args.batch_size]
                optimizer.zero_grad()
                loss = loss_fn(model(x[batch]), y[batch])
                loss = loss + proximal_term(model, task)  # [fedprox]
                loss.backward()
                scaffold.apply()  # [scaffold]
                optimizer.step()
        trained = True
        metrics = evaluate_on(model, x, y)
        shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        print(f"round {task.current_round}/{task.total_rounds}: {shown}", flush=True)
        fl.send(
            fl.FLModel(
                params=get_weights(model),
                metrics=metrics,
                num_examples=len(y),
                extras=scaffold.result(lr=args.lr),  # [scaffold]
            )
        )


if __name__ == "__main__":
    main()
