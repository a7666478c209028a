"""What the PyTorch adapter costs: get/set of a 100 MiB and a 1 GiB state dict.

    python bench/torch_adapter.py [--quick] [--sizes 100M,1G] [--device cpu|cuda] [--save]

Each measurement runs in a fresh process (peaks never mix) holding a module
of float32 parameters (8 tensors) of the given size:

- get: ``get_weights(module)``: views of a CPU module's tensors, no copy
  (on CUDA, one copy to host);
- set: ``set_weights(module, params)`` from writable arrays in memory (what
  ``receive()`` hands a training script), copied into the module's tensors;
- set-mmap: the same from a memory-mapped file (read-only arrays: the
  server's final model, a resumed round).

Seconds are the median of ``--repeat`` calls (the first apart: it faults in
whatever the later ones reuse). Peak RSS is the process's VmHWM, reset
(``/proc/self/clear_refs``) just before the first call, so it covers the
calls alone; "before" is the RSS then: the module, plus the params for set.
``--save`` also writes the output to ``bench/results/<date>-torch-adapter[-cuda].md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import MiB, Tee, emit, fmt_s, header, mib, proc_status, table, write_result  # noqa: E402
from transfer import parse_size  # noqa: E402

OPS = ("get", "set", "set-mmap")
NUM_TENSORS = 8


def _module(size: int, device: str):  # type: ignore[no-untyped-def]
    import torch

    module = torch.nn.Module()
    n = size // 4 // NUM_TENSORS
    for i in range(NUM_TENSORS):
        # 1 KiB rows, like a layer's weight matrix.
        param = torch.empty((n // 256, 256), dtype=torch.float32, device=device)
        param.uniform_(-1, 1)
        layer = torch.nn.Module()
        layer.weight = torch.nn.Parameter(param)
        module.add_module(f"layer{i}", layer)
    return module


def _child(op: str, size: int, device: str, repeat: int, tmp: Path) -> dict:
    """One measurement, in this (fresh) process."""
    import numpy as np

    from shoal.arrays import load_arrays, save_arrays
    from shoal.frameworks.torch import get_weights, set_weights

    module = _module(size, device)
    params = None
    if op == "set":
        params = {
            name: np.full(tuple(t.shape), 0.5, np.float32) for name, t in module.named_parameters()
        }
    elif op == "set-mmap":
        path = save_arrays(
            tmp / "m.safetensors",
            {
                name: np.full(tuple(t.shape), 0.5, np.float32)
                for name, t in module.named_parameters()
            },
            durable=False,
        )
        params = load_arrays(path)
    Path("/proc/self/clear_refs").write_text("5")
    before = proc_status_self()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        if op == "get":
            out = get_weights(module)
        else:
            assert params is not None
            set_weights(module, params)
            if device != "cpu":
                import torch

                torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if op == "get":
            del out
    after = proc_status_self()
    return {
        "op": op,
        "size": size,
        "device": device,
        "times": times,
        "rss_before": before["VmRSS"],
        "peak": after["VmHWM"],
    }


def proc_status_self() -> dict[str, int]:
    import os

    return proc_status(os.getpid())


def measure(op: str, size: int, device: str, repeat: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="shoal-bench-torch-") as tmp:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            op,
            "--sizes",
            str(size),
            "--device",
            device,
            "--repeat",
            str(repeat),
            "--tmp",
            tmp,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr else "failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a 4 MiB module, 2 calls")
    p.add_argument("--sizes", default="100M,1G")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--save", action="store_true", help="also write bench/results/<date>-...md")
    p.add_argument("--child", choices=OPS, help=argparse.SUPPRESS)
    p.add_argument("--tmp", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, int(args.sizes), args.device, args.repeat, args.tmp)))
        return 0
    if args.quick:
        args.sizes, args.repeat = "4M", 2
    with Tee() as tee:
        header(f"torch adapter: get_weights / set_weights, float32 module on {args.device}")
        try:
            import torch
        except ImportError:
            emit("PyTorch is not installed (pip install 'shoal[pt]'): nothing measured")
            return 0
        emit(
            f"torch {torch.__version__}; {NUM_TENSORS} tensors per module; {args.repeat} calls each"
        )
        rows = []
        for size in [parse_size(s) for s in args.sizes.split(",")]:
            for op in OPS:
                emit(f"... {op} {mib(size)}")
                try:
                    r = measure(op, size, args.device, args.repeat)
                except Exception as exc:
                    emit(f"    FAILED: {type(exc).__name__}: {exc}")
                    continue
                later = r["times"][1:] or r["times"]
                extra = r["peak"] - r["rss_before"]
                rows.append(
                    [
                        mib(size),
                        op,
                        fmt_s(r["times"][0]),
                        fmt_s(statistics.median(later)),
                        mib(r["rss_before"]),
                        mib(r["peak"]),
                        f"{extra / MiB:+.0f} MiB ({extra / size:+.2f}x)",
                    ]
                )
        emit()
        table(
            rows,
            [
                "state dict",
                "op",
                "first call",
                "median of the rest",
                "RSS before",
                "peak RSS",
                "peak over before (x model)",
            ],
        )
    if args.save:
        suffix = "" if args.device == "cpu" else f"-{args.device}"
        emit(f"saved {write_result(f'torch-adapter{suffix}', tee.text())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
