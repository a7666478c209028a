"""Host costs behind the runtime's choices: checksum speeds, memory touched
afresh against memory reused, a new file's page cache against a cached one.

    python bench/host_costs.py [--quick] [--size 100M] [--idle 0,5,20]

- checksums: GB/s of SHA-256 and XXH3-128 over ``size`` random bytes (why
  payloads carry XXH3-128, ``shoal.checksum``);
- memory: GiB/s filling 2 x ``size`` of memory right after freeing the same
  amount, then after each ``--idle`` pause (a VM that hands freed memory back
  to its host charges for every page touched again: why the weighted mean,
  the worker's task buffers and glibc's trim threshold reuse memory);
- files: CPU seconds writing ``size`` into a new file against over a file
  whose pages are cached, each after 3 s idle (why FedAvg writes a new
  model over a result it has folded in, ``arrays.write_arrays(reuse=)``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import MiB, emit, header, table  # noqa: E402
from transfer import parse_size  # noqa: E402

from shoal import checksum  # noqa: E402


def _rate(fn, nbytes: int, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    best = min(_timed(fn) for _ in range(repeat))
    return nbytes / best / 1e9


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _cpu() -> float:
    return time.process_time()


def _write(path: Path, data: memoryview, mode: str) -> float:
    c = _cpu()
    with open(path, mode) as f:
        for i in range(0, len(data), MiB):
            f.write(data[i : i + MiB])
        f.truncate()
    return _cpu() - c


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="8 MiB, no idle pauses")
    p.add_argument("--size", default="100M")
    p.add_argument("--idle", default="0,5,20", help="seconds idle before refilling memory")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.idle = "8M", "0"
    size = parse_size(args.size)
    header("host costs: checksums, fresh against reused memory and page cache")

    data = os.urandom(size)
    rows = [
        ["SHA-256 (hashlib)", f"{_rate(lambda: hashlib.sha256(data).digest(), size):.2f} GB/s"],
        ["XXH3-128 (shoal.checksum)", f"{_rate(lambda: checksum.of_bytes(data), size):.2f} GB/s"],
    ]
    table(rows, ["checksum", f"speed over {size // MiB} MiB"])

    emit()
    n = 2 * size // 8
    rows = []
    for idle in [float(x) for x in args.idle.split(",")]:
        a = np.ones(n)
        del a
        time.sleep(idle)
        t = _timed(lambda: np.ones(n))
        rows.append([f"{idle:g} s", f"{2 * size / t / 2**30:.2f} GiB/s"])
    table(rows, ["idle after freeing", f"filling {2 * size // MiB} MiB again"])

    emit()
    view = memoryview(np.frombuffer(data, dtype=np.uint8))
    rows = []
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as d:
        folder = Path(d)
        cached = folder / "cached"
        _write(cached, view, "wb")
        os.sync()
        for k in range(2 if args.quick else 3):
            time.sleep(0 if args.quick else 3)
            new = _write(folder / f"new{k}", view, "wb")
            time.sleep(0 if args.quick else 3)
            over = _write(cached, view, "r+b")
            rows.append([str(k + 1), f"{new:.3f} s", f"{over:.3f} s"])
            (folder / f"new{k}").unlink()
    table(rows, ["try", f"new file, {size // MiB} MiB: CPU", "over a cached file: CPU"])


if __name__ == "__main__":
    main()
