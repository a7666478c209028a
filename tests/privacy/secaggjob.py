"""A numpy job for the ``secagg`` workflow whose every update is known in advance.

Site ``i`` (0-based, by name) in round ``k`` sets each weight to the task's
plus ``delta(i, k)``, uniform in [-0.4, 0.4] from a seed of ``(i, k)``, and
reports ``num_examples = 10 * (i + 1)``: so FedAvg's model after each round
is computed by :func:`expected_model` without running anything. A site named
by ``--drop-site`` leaves in round ``--drop-round``, ``--drop-when after``
it sent its masked update (the server then has it, but no answer to the
unmasking stage) or ``before`` (a dropped site: its masks must go):
``--drop-how exit`` ends its script (the simulator's threads), ``kill``
kills its process with SIGKILL (a real site's worker).
Written by :func:`write_secagg_job`; run by the simulator and by real daemons
(tests/privacy, tests/integration).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

SHAPES = {"w": (256, 256), "b": (16,)}

MODEL_PY = """
import numpy as np

SHAPES = {shapes!r}


def initial_weights():
    rng = np.random.default_rng(0)
    out = {{n: rng.normal(size=s).astype(np.float32) for n, s in SHAPES.items()}}
    out["steps"] = np.zeros(1, dtype=np.int64)
    return out


def delta(index, round):
    rng = np.random.default_rng([index, round])
    return {{n: rng.uniform(-0.4, 0.4, s) for n, s in SHAPES.items()}}


def num_examples(index):
    return 10 * (index + 1)
"""

TRAIN_PY = """
import argparse
import os
import signal

import numpy as np
import shoal.client as fl
from model import delta, num_examples

parser = argparse.ArgumentParser()
parser.add_argument("--drop-site", default="")
parser.add_argument("--drop-round", type=int, default=0)
parser.add_argument("--drop-how", default="exit")
parser.add_argument("--drop-when", default="after")
args = parser.parse_args()


def leave(k):
    print(f"{info['site_name']} leaves {args.drop_when} its masked update of round {k}", flush=True)
    if args.drop_how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise SystemExit(0)


fl.init()
info = fl.system_info()
while fl.is_running():
    task = fl.receive()
    assert task.task == "train", task.task
    k = task.current_round
    dropping = info["site_name"] == args.drop_site and k == args.drop_round
    if dropping and args.drop_when == "before":
        leave(k)
    d = delta(info["site_index"], k)
    new = dict(task.params)
    for name, change in d.items():
        new[name] = (np.asarray(task.params[name], dtype=np.float64) + change).astype(np.float32)
    fl.send(fl.FLModel(
        params=new,
        num_examples=num_examples(info["site_index"]),
        metrics={"extras_seen": float(len(task.extras))},
    ))
    if dropping:
        leave(k)
"""


def write_secagg_job(
    folder: Path,
    *,
    rounds: int = 2,
    min_clients: int = 2,
    threshold: int = 0,
    neighbours: int = 0,
    clip_range: float = 0.5,
    drop: Sequence[str] = (),
    extra: str = "",
) -> Path:
    """The job folder; ``drop``: ``(site, round, how, when)`` for the script."""
    app = folder / "app"
    app.mkdir(parents=True, exist_ok=True)
    (app / "model.py").write_text(MODEL_PY.format(shapes=SHAPES))
    (app / "train.py").write_text(TRAIN_PY)
    args = ""
    if drop:
        site, round_, how, when = drop
        args = (
            f'  args: [--drop-site, {site}, --drop-round, "{round_}", --drop-how, {how}, '
            f"--drop-when, {when}]\n"
        )
    (folder / "job.yml").write_text(
        "name: secagg-job\n"
        f"min_clients: {min_clients}\n"
        "workflow:\n"
        "  name: secagg\n"
        f"  num_rounds: {rounds}\n"
        f"  clip_range: {clip_range}\n"
        f"  threshold: {threshold}\n"
        f"  neighbours: {neighbours}\n"
        "  round_timeout_s: 120\n"
        "  stage_timeout_s: 60\n"
        f"{extra}"
        "client:\n"
        "  script: train.py\n"
        f"{args}"
        "server:\n"
        '  initial_weights: "model:initial_weights"\n'
    )
    return folder


def _namespace(folder: Path) -> dict:
    ns: dict = {}
    exec((folder / "app" / "model.py").read_text(), ns)  # our own file, not network data
    return ns


def expected_model(
    folder: Path, sites: Sequence[str], rounds: int, *, dropped: dict[int, set[str]] | None = None
) -> dict[str, np.ndarray]:
    """FedAvg's model after ``rounds`` (float64): each round the mean of the
    summed sites' ``delta``, weighted by ``num_examples``; ``dropped``: the
    sites whose update a round left out."""
    ns = _namespace(folder)
    names = sorted(sites)
    model = {n: a.astype(np.float64) for n, a in ns["initial_weights"]().items()}
    for k in range(1, rounds + 1):
        summed = [s for s in names if s not in (dropped or {}).get(k, set())]
        weights = {s: ns["num_examples"](names.index(s)) for s in summed}
        total = sum(weights.values())
        for n in SHAPES:
            model[n] = (
                model[n]
                + sum(weights[s] * ns["delta"](names.index(s), k)[n] for s in summed) / total
            )
    return model


def bound(
    sites_summed: int, *, clip_range: float, max_weight: int, weight_sum: int, n: int
) -> float:
    """The most a coordinate may be off per round: one quantization step per
    summed site, over the weights' share of ``max_weight``."""
    levels = (2**32 - 1) // n
    step = 2 * clip_range / levels
    return sites_summed * step * max_weight / weight_sum
