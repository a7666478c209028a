"""Memory of the server-side algorithms (issue 20): the workflow process's
peak RSS for FedAvg, the server optimizers (FedAvgM, FedAdam, FedYogi,
FedAdagrad), FedProx and the robust aggregators (median, trimmed mean, Krum,
Multi-Krum), with a 100 MiB model and 8 sites.

    python bench/algorithms.py [--quick] [--size 100M] [--sites 8] [--rounds 3] [--only a,b]

Each configuration runs in a fresh process: the real round driver and the
registered workflow, fed by a communicator that hands each round's results
over as files (as the server's runtime does: verified files the workflow
memory-maps), copied from results written once before. No network: this is
the workflow process of the server, which ``bench/memory.py`` measures beside
the daemon in a whole federation. Peak = VmHWM of the process (the kernel's
high-water mark, so file pages mapped and touched count too); "over the
start" subtracts the VmHWM after imports, before the workflow runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, header, mib, proc_status, table, write_job  # noqa: E402
from transfer import parse_size  # noqa: E402

#: name -> (workflow, its parameters beside num_rounds).
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "fedavg": ("fedavg", {}),
    "fedprox": ("fedprox", {"mu": 0.01}),
    "fedavgm": ("fedavgm", {}),
    "fedadam": ("fedadam", {}),
    "fedyogi": ("fedyogi", {}),
    "fedadagrad": ("fedadagrad", {}),
    "median": ("fedavg", {"aggregator": "median"}),
    "trimmed_mean": ("fedavg", {"aggregator": "trimmed_mean", "trim_fraction": 0.25}),
    "krum": ("fedavg", {"aggregator": "krum", "krum_byzantine": 1}),
    "multi_krum": ("fedavg", {"aggregator": "multi_krum", "krum_byzantine": 1}),
    "fedadam+median": ("fedadam", {"aggregator": "median"}),
}


class FileComm:
    """Each round, every asked site answers with a copy of its result file."""

    def __init__(self, sources: Sequence[Path], results_dir: Path) -> None:
        self.sources = {f"site-{i + 1}": p for i, p in enumerate(sources)}
        self.results_dir = results_dir
        self.tasks: dict[str, tuple[int, list[str]]] = {}
        self._ids = itertools.count()

    def sites(self) -> Sequence[str]:
        return list(self.sources)

    def scatter(self, *, task: str, round: int, weights_path: Path, sites: Sequence[str],
                meta: Mapping[str, Any] | None = None, weights_checksum: str | None = None) -> str:  # fmt: skip
        task_id = f"t{next(self._ids)}"
        self.tasks[task_id] = (round, list(sites))
        return task_id

    def gather(self, task_id: str, *, timeout: float) -> Iterator[Any]:
        from shoal.workflows import TaskResult

        rnd, sites = self.tasks[task_id]
        for i, site in enumerate(sites):
            # A copy through the kernel (sendfile): no page of it in this process.
            path = self.results_dir / f"{task_id}-{site}.safetensors"
            shutil.copyfile(self.sources[site], path)
            yield TaskResult(
                site=site, task_id=task_id, round=rnd, num_examples=10 * (i + 1), metrics={},
                path=path,
            )  # fmt: skip

    def finish(self) -> None:
        pass

    def report(self, **progress: Any) -> None:
        pass


def _write_results(folder: Path, job: Path, sites: int) -> list[Path]:
    """Each site's result: the initial model plus its own noise, written once."""
    import numpy as np

    from shoal.arrays import save_arrays

    ns: dict[str, Any] = {}
    exec(compile((job / "app" / "model.py").read_text(), "model.py", "exec"), ns)  # noqa: S102
    base = ns["initial_weights"]()
    out = []
    for i in range(sites):
        rng = np.random.default_rng(i)
        arrays = {
            k: v + rng.normal(scale=0.01, size=v.shape).astype(v.dtype) for k, v in base.items()
        }
        out.append(save_arrays(folder / f"site-{i + 1}.safetensors", arrays))
        del arrays
    return out


def run_one(name: str, job: Path, results: list[Path], rounds: int, sites: int) -> dict[str, Any]:
    """In this (fresh) process: one configuration, its peak RSS and round times."""
    from shoal.jobs import ClientAppSpec, JobSpec, ServerAppSpec, WorkflowSpec
    from shoal.workflows import WorkflowContext, get_workflow

    workflow, params = CONFIGS[name]
    params = {"num_rounds": rounds, "round_timeout_s": 3600, **params}
    run_dir = Path(tempfile.mkdtemp(prefix=f"shoal-bench-{name}-", dir=job.parent))
    (run_dir / "results").mkdir()
    spec = JobSpec(
        name="bench",
        min_clients=sites,
        workflow=WorkflowSpec(name=workflow, params=params),
        client=ClientAppSpec(script="train.py"),
        server=ServerAppSpec(initial_weights="model:initial_weights"),
    )
    ctx = WorkflowContext(
        job_id=name, spec=spec, params=params, app_dir=job / "app",
        run_dir=run_dir / "run", comm=FileComm(results, run_dir / "results"),
    )  # fmt: skip
    start = proc_status(os.getpid())["VmHWM"]
    t0 = time.perf_counter()
    get_workflow(workflow)(ctx)
    wall = time.perf_counter() - t0
    peak = proc_status(os.getpid())["VmHWM"]
    lines = [json.loads(x) for x in (run_dir / "run" / "metrics.jsonl").read_text().splitlines()]
    state = sorted((run_dir / "run" / "server_state").glob("*.safetensors"))
    out = {
        "name": name,
        "start": start,
        "peak": peak,
        "state_bytes": state[-1].stat().st_size if state else 0,
        "round_s": [x["duration_s"] for x in lines],
        "wall_s": round(wall, 3),
    }
    shutil.rmtree(run_dir, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="4 MiB model, 8 sites, 1 round")
    p.add_argument("--size", default="100M")
    p.add_argument("--sites", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", default="", help="comma-separated names of " + ", ".join(CONFIGS))
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.rounds = "4M", 1
    size = parse_size(args.size)
    if args.one:  # the child: one configuration, one JSON line
        folder = Path(args.dir)
        results = sorted(
            (folder / "results").glob("site-*.safetensors"), key=lambda q: int(q.stem[5:])
        )
        res = run_one(args.one, folder / "job", results, args.rounds, args.sites)
        print("RESULT " + json.dumps(res), flush=True)
        return [res]

    names = [n for n in args.only.split(",") if n] or list(CONFIGS)
    header(
        f"algorithms: peak RSS of the workflow process, {mib(size)} model, "
        f"{args.sites} sites, {args.rounds} rounds"
    )
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="shoal-bench-alg-") as tmp:
        folder = Path(tmp)
        job = write_job(folder, name="job", num_rounds=args.rounds, model_bytes=size, num_arrays=8)
        (folder / "results").mkdir()
        _write_results(folder / "results", job, args.sites)
        for name in names:
            emit(f"... {name}")
            cmd = [sys.executable, __file__, "--one", name, "--dir", tmp, "--size", args.size,
                   "--sites", str(args.sites), "--rounds", str(args.rounds)]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                emit(f"    FAILED ({proc.returncode}): {proc.stderr.strip()[-800:]}")
                out.append({"name": name, "error": proc.stderr.strip()[-200:]})
                continue
            res = json.loads(line[len("RESULT ") :])
            emit(f"    raw: {res}")
            out.append(res)
    emit()
    rows = []
    for r in out:
        if "error" in r:
            rows.append([r["name"], "FAILED", "", "", "", ""])
            continue
        over = r["peak"] - r["start"]
        rounds = r["round_s"]
        rows.append(
            [
                r["name"],
                f"{mib(r['peak'])}",
                f"{mib(over)} ({over / size:.2f}x)",
                f"{mib(r['state_bytes'])}" if r["state_bytes"] else "none",
                f"{sorted(rounds)[len(rounds) // 2]:.2f} s",
            ]
        )
    table(
        rows, ["config", "peak RSS", "over the start (x model)", "server state", "round (median)"]
    )
    return out


if __name__ == "__main__":
    main()
