"""What FedBuff's saved buffer costs the server per result (issue 20).

    python bench/fedbuff_buffer.py [--quick] [--sizes 1M,10M,100M] [--repeat 7] [--save]

After each result folded into a version that is not yet complete, FedBuff
saves the buffer (the running sums, one model's worth of float arrays, and
the results' metadata as JSON) with ``RoundStore.write_state``, durably, so
that a server restart keeps the results already folded. This times that very
call on a buffer of each size holding 4 results, in a run folder on the
workspace's disk (the bench's temporary folder), and prints the bytes each
write puts on disk. The workflow folds results one at a time, so at most
this is added between two results reaching the model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, header, table, write_result  # noqa: E402
from transfer import parse_size  # noqa: E402


def model_of(size: int) -> dict[str, np.ndarray]:
    """A float32 model of about ``size`` bytes in 4 arrays."""
    n = max(1, size // 4 // 4)
    rng = np.random.default_rng(0)
    return {f"layer{i}": rng.standard_normal(n, dtype=np.float32) for i in range(4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", default="1M,10M,100M")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.repeat = "1M", 3

    from shoal.workflows.api import TaskResult
    from shoal.workflows.fedbuff import _Buffer
    from shoal.workflows.store import RoundStore

    text = [header("FedBuff: saving the version in progress's buffer, per result")]
    rows = []
    for size in (parse_size(s) for s in args.sizes.split(",")):
        model = model_of(size)
        buffer = _Buffer(model)
        for i in range(4):
            for k, v in buffer.sums.items():
                v += model[k]
            buffer.results.append(
                TaskResult(
                    site=f"site-{i + 1}",
                    task_id=f"t{i}",
                    round=1,
                    num_examples=100 + i,
                    metrics={"loss": 0.5},
                    path=Path(),
                )
            )
            buffer.stalenesses.append(i % 3)
        with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent) as tmp:
            store = RoundStore(Path(tmp) / "run")
            store.state_dir.mkdir(parents=True)
            times = []
            for r in range(args.repeat):
                t0 = time.perf_counter()
                # The same version's file again, as results of one version arrive.
                path = store.write_state(1, buffer.state(1, 1.0 + r))
                times.append(time.perf_counter() - t0)
            assert path is not None
            on_disk = path.stat().st_size
        model_bytes = sum(v.nbytes for v in model.values())
        rows.append(
            [
                f"{model_bytes / 2**20:.0f} MiB",
                f"{statistics.median(times) * 1e3:.1f}",
                f"{min(times) * 1e3:.1f}",
                f"{max(times) * 1e3:.1f}",
                f"{on_disk:,}",
            ]
        )
        emit(f"{model_bytes / 2**20:.0f} MiB: median {statistics.median(times) * 1e3:.1f} ms")
    text.append(
        table(
            rows,
            ["model", "ms per result (median)", "min", "max", "bytes written per result"],
        )
    )
    if args.save and not args.quick:
        emit(f"saved {write_result('fedbuff-buffer', chr(10).join(text) + chr(10))}")


if __name__ == "__main__":
    main()
