"""__JOB_NAME__'s site script: train the global model on this site's data.

It uses only the Client API (``shoal.client``), so it runs unchanged in
``shoal simulate`` and under a real site. It answers every task a workflow may
send: ``train``, ``validate`` (evaluate the task's model here) and
``submit_model`` (this site's own model, for cross-site evaluation). Options (job.yml ``client.args``):
``--epochs``, ``--lr``, ``--batch-size``, ``--seed``.
"""

from __future__ import annotations

import argparse

import numpy as np
from data import site_data
from model import build_model, evaluate_on, train

import shoal.client as fl
from shoal.client.scaffold import ControlVariates  # [scaffold]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=2, help="local epochs per round")
    parser.add_argument("--lr", type=float, default=0.1, help="learning rate")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    fl.init()
    info = fl.system_info()
    # Each site takes its own shard: site_index is 0..num_sites-1.
    x, y = site_data(info["site_index"], info["num_sites"])
    print(f"{info['site_name']}: {len(y)} training examples", flush=True)
    model = build_model()
    trained = False

    while fl.is_running():
        task = fl.receive()  # this round's global model
        if fl.is_evaluate():
            # "validate": this model's metrics on this site's data; no weights go back.
            metrics = evaluate_on(task.params, x, y)
            fl.send(fl.FLModel(metrics=metrics, num_examples=len(y)))
            continue
        if fl.is_submit_model() and trained:
            # Cross-site evaluation asks for this site's own model: the last it trained.
            fl.send(fl.FLModel(params=model, num_examples=len(y)))
            continue
        for name, value in task.params.items():
            model[name] = np.array(value, dtype=np.float32)
        scaffold = ControlVariates(task, fl.state_dir())  # [scaffold]
        steps = train(
            model,
            x,
            y,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed + 1000 * (task.current_round or 0) + info["site_index"],
            correction=scaffold.correction,  # [scaffold]
            anchor=task.params,  # [fedprox]
            mu=task.meta["fedprox_mu"],  # [fedprox]
        )
        trained = True
        metrics = evaluate_on(model, x, y)
        shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        print(
            f"round {task.current_round}/{task.total_rounds}: {shown} ({steps} steps)", flush=True
        )
        fl.send(
            fl.FLModel(
                params=model,
                metrics=metrics,
                num_examples=len(y),
                extras=scaffold.update(model, num_steps=steps, lr=args.lr),  # [scaffold]
            )
        )


if __name__ == "__main__":
    main()
