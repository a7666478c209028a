"""__JOB_NAME__'s site script: train the global model on this site's data.

It uses only the Client API (``shoal.client``), so it runs unchanged in
``shoal simulate`` and under a real site. It answers every task a workflow may
send: ``train``, ``validate`` (evaluate the task's model here) and
``submit_model`` (this site's own model, for cross-site evaluation). Options (job.yml ``client.args``):
``--epochs``, ``--lr``, ``--batch-size``.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from data import site_data  # noqa: E402
from model import build_model  # noqa: E402

import shoal.client as fl  # noqa: E402
from shoal.frameworks.keras import (  # noqa: E402
    ProximalTerm,  # [fedprox]
    ScaffoldCorrection,  # [scaffold]
    get_weights,
    set_weights,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=2, help="local epochs per round")
    parser.add_argument("--lr", type=float, default=0.01, help="learning rate (Adam)")
    parser.add_argument("--batch-size", type=int, default=32)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    fl.init()
    info = fl.system_info()
    # Each site takes its own shard: site_index is 0..num_sites-1.
    x, y = site_data(info["site_index"], info["num_sites"])
    print(f"{info['site_name']}: {len(y)} training examples", flush=True)
    model, evaluator = build_model(args.lr), build_model(args.lr)
    trained = False

    while fl.is_running():
        task = fl.receive()  # this round's global model
        if fl.is_evaluate():
            # "validate": this model's metrics on this site's data; no weights go back.
            set_weights(evaluator, task.params)
            scores = evaluator.evaluate(x, y, batch_size=256, verbose=0, return_dict=True)
            metrics = {k: float(v) for k, v in scores.items()}
            fl.send(fl.FLModel(metrics=metrics, num_examples=len(y)))
            continue
        if fl.is_submit_model() and trained:
            # Cross-site evaluation asks for this site's own model: the last it trained.
            fl.send(fl.FLModel(params=get_weights(model), num_examples=len(y)))
            continue
        set_weights(model, task.params)
        scaffold = ScaffoldCorrection(model, task, fl.state_dir())  # [scaffold]
        callbacks = []  # [not fedprox]
        callbacks = [ProximalTerm(task)]  # [fedprox]
        history = model.fit(
            x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0, callbacks=callbacks
        )
        trained = True
        metrics = {
            "loss": float(history.history["loss"][-1]),
            "accuracy": float(history.history["accuracy"][-1]),
        }
        shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        print(f"round {task.current_round}/{task.total_rounds}: {shown}", flush=True)
        fl.send(
            fl.FLModel(
                params=get_weights(model),
                metrics=metrics,
                num_examples=len(y),
                extras=scaffold.result(),  # [scaffold]
            )
        )


if __name__ == "__main__":
    main()
