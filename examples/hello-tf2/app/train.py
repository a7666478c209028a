"""hello-tf2 site script: train the global model on this site's MNIST shard.

Uses only the Client API, so it runs unchanged under a site daemon and in
``shoal simulate``. Besides ``train`` it answers the evaluation tasks
(docs/client-api.md): ``validate`` (the given model's loss and accuracy on
this site's test images, no weights back) and ``submit_model`` (this site's
last trained weights, for cross-site evaluation). Options (job.yml ``client.args``): ``--epochs``,
``--batch-size``, ``--split`` (``even`` or weights like ``0.7,0.3``; also the
``HELLO_TF2_SPLIT`` environment variable) and ``--seed``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from data import site_shard  # noqa: E402
from model import build_model  # noqa: E402

import shoal.client as fl  # noqa: E402
from shoal.frameworks.keras import get_weights, set_weights  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=2, help="local epochs per round")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--split", default=os.environ.get("HELLO_TF2_SPLIT", "even"))
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    fl.init()
    info = fl.system_info()
    index, count = info["site_index"], info["num_sites"]
    keras.utils.set_random_seed(args.seed + index)
    (x_train, y_train), (x_test, y_test) = site_shard(index, count, args.split, args.seed)
    print(f"{len(x_train)} training and {len(x_test)} test images", flush=True)
    model = build_model()

    local = None  # this site's last trained weights
    while fl.is_running():
        task = fl.receive()
        if fl.is_submit_model() and local is not None:
            fl.send(fl.FLModel(params=local, num_examples=len(x_train)))
            continue
        set_weights(model, task.params)
        if fl.is_evaluate():
            loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
            fl.send(
                fl.FLModel(
                    metrics={"loss": float(loss), "accuracy": float(accuracy)},
                    num_examples=len(x_test),
                )
            )
            continue
        started = time.perf_counter()
        history = model.fit(
            x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=0
        )
        val_loss, val_accuracy = model.evaluate(x_test, y_test, verbose=0)
        metrics = {
            "loss": float(history.history["loss"][-1]),
            "accuracy": float(history.history["accuracy"][-1]),
            "val_loss": float(val_loss),
            "val_accuracy": float(val_accuracy),
        }
        print(
            f"round {task.current_round}/{task.total_rounds} "
            f"loss={metrics['loss']:.4f} accuracy={metrics['accuracy']:.4f} "
            f"val_accuracy={metrics['val_accuracy']:.4f} "
            f"({time.perf_counter() - started:.1f}s)",
            flush=True,
        )
        local = get_weights(model)
        fl.send(fl.FLModel(params=local, metrics=metrics, num_examples=len(x_train)))


if __name__ == "__main__":
    main()
