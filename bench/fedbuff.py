"""FedBuff next to FedAvg when half the sites are 10x slower (issue 20, item 8).

    python bench/fedbuff.py [--quick] [--sites 8] [--fast-s 0.05]

A numpy problem with a known answer: site i's loss is ||w - c_i||^2, the
federation's loss the mean over sites, minimised at mean(c_i). Two settings:
IID (every c_i the same) and non-IID (c_i = c + N(0, 1) per site, seeded). Each task is 5 steps of
gradient descent (lr 0.1) on the site's loss, then a sleep: ``fast-s`` for
even sites, 10x that for odd ones. Both workflows run in ``shoal.sim``
(threads, one per site); the server's ``evaluate`` hook reports the
federation's loss after each round (FedAvg) or version (FedBuff, K = half
the sites, server_lr 1, staleness 1/sqrt(1+tau)). Printed: the loss reached
by a given wall time (from the first task going out; metrics.jsonl
``started`` + ``duration_s``), and the end of each run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, header, table, write_result  # noqa: E402

APP = """\
import numpy as np

DIM = 16


def centre(index):
    import os
    spread = float(os.environ["BENCH_SPREAD"])
    base = np.random.default_rng(7).normal(0.0, 1.0, DIM)
    return base + spread * np.random.default_rng([7, index]).normal(0.0, 1.0, DIM)


def initial():
    return {"w": np.zeros(DIM)}


def evaluate(params, round):
    import json, os
    n = int(os.environ["BENCH_SITES"])
    cs = np.stack([centre(i) for i in range(n)])
    loss = float(np.mean(np.sum((params["w"] - cs) ** 2, axis=1)))
    return {"loss": loss, "opt_gap": loss - float(np.mean(np.sum((cs - cs.mean(0)) ** 2, axis=1)))}
"""

TRAIN = """\
import sys, time
import shoal.client as fl
from model import centre

fast = float(sys.argv[1])
fl.init()
info = fl.system_info()
c = centre(info["site_index"])
delay = fast * (10 if info["site_index"] % 2 else 1)
while fl.is_running():
    m = fl.receive()
    if m is None:
        break
    w = m.params["w"]
    for _ in range(5):
        w -= 0.1 * 2 * (w - c)
    time.sleep(delay)
    fl.send(fl.FLModel(params={"w": w}, num_examples=100))
"""


def write_job(folder: Path, workflow: str, fast_s: float) -> Path:
    (folder / "app").mkdir(parents=True)
    (folder / "job.yml").write_text(
        textwrap.dedent(
            f"""\
            name: {folder.name}
            min_clients: 2
            workflow: {workflow}
            client: {{script: train.py, args: ["{fast_s}"]}}
            server: {{initial_weights: "model:initial", evaluate: "model:evaluate"}}
            """
        )
    )
    (folder / "app" / "model.py").write_text(APP)
    (folder / "app" / "train.py").write_text(TRAIN)
    return folder


def curve(run_dir: Path) -> list[tuple[float, float, float]]:
    """(seconds since the first task, loss, opt_gap) after each round/version."""
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    t0 = float(lines[0]["started"])
    return [
        (
            float(m["started"]) + float(m["duration_s"]) - t0,
            m["server"]["loss"],
            m["server"]["opt_gap"],
        )
        for m in lines
    ]


def at(points: list[tuple[float, float, float]], t: float) -> str:
    done = [p for p in points if p[0] <= t]
    return f"{done[-1][2]:.4f}" if done else "-"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sites", type=int, default=8)
    ap.add_argument("--fast-s", type=float, default=0.05)
    args = ap.parse_args()
    import os

    from shoal.sim import SimulatorConfig, simulate

    os.environ["BENCH_SITES"] = str(args.sites)
    text = [header("FedBuff vs FedAvg, half the sites 10x slower")]
    for setting, spread in (("IID", 0.0), ("non-IID", 1.0)):
        os.environ["BENCH_SPREAD"] = str(spread)
        emit(f"\n## {setting} (site optima spread {spread})")
        text.append(f"## {setting} (site optima spread {spread})")
        text += compare(args, simulate, SimulatorConfig)
    if not args.quick:
        write_result("fedbuff", "\n\n".join(text) + "\n")


def compare(args: argparse.Namespace, simulate: Any, SimulatorConfig: Any) -> list[str]:
    text: list[str] = []
    rounds = 4 if args.quick else 15
    k = max(1, args.sites // 2)
    versions = rounds * 4
    emit(
        f"{args.sites} sites, fast task {args.fast_s} s, slow {10 * args.fast_s} s; "
        f"FedAvg {rounds} rounds; FedBuff {versions} versions, K={k}"
    )
    runs = {
        "fedavg": f"{{name: fedavg, num_rounds: {rounds}}}",
        "fedbuff": f"{{name: fedbuff, num_versions: {versions}, buffer_size: {k}}}",
    }
    curves: dict[str, list[tuple[float, float, float]]] = {}
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, workflow in runs.items():
            job = write_job(Path(tmp) / "jobs" / name, workflow, args.fast_s)
            result = simulate(
                SimulatorConfig(
                    job_dir=job, num_sites=args.sites, workdir=Path(tmp), threads=args.sites
                )
            )
            if not result.ok:
                raise SystemExit(result.failure_summary())
            curves[name] = curve(result.run_dir)
            lines = [
                json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()
            ]
            slow = fast = 0
            for m in lines:
                for site, n in (m.get("contributions") or dict.fromkeys(m["sites"], 1)).items():
                    if int(site.split("-")[1]) % 2 == 0:  # site-2 has index 1: slow
                        slow += n
                    else:
                        fast += n
            last = curves[name][-1]
            summary.append([name, len(lines), f"{last[0]:.2f}", f"{last[2]:.4f}", fast, slow])
    marks = [0.5, 1, 2, 4, 8] if not args.quick else [0.5, 1, 2]
    text.insert(0, f"FedAvg {rounds} rounds; FedBuff {versions} versions, K={k}")
    emit("\noptimality gap (federation loss minus its minimum) reached by wall time:")
    text.append(
        table(
            [[name, *(at(c, t) for t in marks)] for name, c in curves.items()],
            ["workflow", *(f"<= {t:g} s" for t in marks)],
        )
    )
    emit("\nend of each run:")
    text.append(
        table(
            summary,
            ["workflow", "rounds/versions", "wall s", "final gap", "fast results", "slow results"],
        )
    )
    return text


if __name__ == "__main__":
    main()
