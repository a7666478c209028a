"""What the libraries shoal uses (or chose not to) cost where it uses them.

    python bench/libraries.py [--quick] [--repeat N]

- TensorBoard scalars: seconds per 1000 scalars through ``ScalarWriter``
  (each ``add_scalars`` one event, written and flushed), in the shapes the
  round driver writes: a round of 2 sites (8 scalars) and one of a
  10,000-site simulation (20,004: two metrics a site); the event file's
  bytes per scalar; the import time ``shoal.tensorboard`` adds to ``shoal``
  and numpy (``-X importtime``, median of ``--repeat`` fresh interpreters),
  and tensorboardX's where it is installed (with and without PyTorch);
- console: the import time of ``rich.console`` + ``rich.table`` and
  ``rich.progress`` (not used; docs/architecture.md says why), and what
  ``rich.progress`` prints for a 5-step job when its output is a pipe.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, header, table  # noqa: E402

from shoal.tensorboard import ScalarWriter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _scalars(n_sites: int, per_site: int = 2) -> dict[str, float]:
    out = {"server/accuracy": 0.93, "aggregated/loss": 0.21}
    for i in range(n_sites):
        for m in range(per_site):
            out[f"sites/site-{i + 1}/metric{m}"] = 0.5 + i * 1e-4 + m
    out["round/num_examples"] = 60000.0
    out["round/duration_s"] = 0.0123
    return out


def _write_rate(n_sites: int, events: int) -> tuple[float, float, int]:
    """(s per 1000 scalars, bytes per scalar, scalars per event)."""
    values = _scalars(n_sites)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        with ScalarWriter(Path(d)) as tb:
            for step in range(1, events + 1):
                tb.add_scalars(values, step=step)
        elapsed = time.perf_counter() - t
        size = sum(p.stat().st_size for p in Path(d).iterdir())
    n = len(values) * events
    return elapsed / n * 1000, size / n, len(values)


def _import_ms(module: str, repeat: int, *, hide: str = "") -> float:
    """Median cumulative import time of ``module`` in a fresh interpreter that
    has imported ``shoal`` and numpy (as a workflow process has), with
    ``hide`` (a package) made unimportable."""
    code = f"import shoal, numpy; import {module}"
    if hide:
        code = f"import sys; sys.modules[{hide!r}] = None; {code}"
    times = []
    for _ in range(repeat):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        for line in proc.stderr.splitlines():
            # "import time: self [us] | cumulative | imported package"
            parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
            if len(parts) == 3 and parts[2] == module:
                times.append(int(parts[1]) / 1000)
    return statistics.median(times)


def _import_rss_mib(module: str, *, hide: str = "") -> float:
    """Resident memory that importing ``module`` adds, after ``shoal`` and numpy."""
    rss = "int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])"
    code = (
        f"import sys; sys.modules.update({{{hide!r}: None}} if {hide!r} else {{}}); "
        f"import shoal, numpy; r = {rss}; import {module}; print({rss} - r)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return int(proc.stdout.strip()) / 1024


def _imports(module: str, repeat: int, *, hide: str = "") -> list[str]:
    return [
        f"{_import_ms(module, repeat, hide=hide):.1f} ms",
        f"{_import_rss_mib(module, hide=hide):.1f} MiB",
    ]


def _rich_progress_in_a_pipe() -> str:
    from rich.console import Console
    from rich.progress import Progress

    out = io.StringIO()
    with Progress(console=Console(file=out, force_terminal=False, width=80)) as bar:
        task = bar.add_task("round", total=5)
        for _ in range(5):
            bar.advance(task)
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer events and imports")
    p.add_argument("--repeat", type=int, default=0, help="fresh interpreters per import time")
    a = p.parse_args(argv)
    repeat = a.repeat or (3 if a.quick else 9)
    header("shoal's library choices: TensorBoard scalars, console output")

    emit("\n## TensorBoard scalars (shoal.tensorboard.ScalarWriter)")
    rows = []
    for what, sites, events in (
        ("round of 2 sites", 2, 200 if a.quick else 2000),
        ("round of 10,000 sites", 10_000, 2 if a.quick else 10),
    ):
        per_k, per_scalar, n = _write_rate(sites, events)
        rows.append([what, n, events, f"{per_k * 1000:.2f} ms", f"{per_scalar:.1f}"])
    table(rows, ["shape", "scalars/event", "events", "per 1000 scalars", "file bytes/scalar"])
    rows = [["shoal.tensorboard", *_imports("shoal.tensorboard", repeat)]]
    if importlib.util.find_spec("tensorboardX") is not None:
        # Not a dependency: the library shoal.tensorboard does not use.
        if importlib.util.find_spec("torch") is not None:
            rows.append(
                [
                    "tensorboardX (PyTorch installed: it imports torch)",
                    *_imports("tensorboardX", repeat),
                ]
            )
        rows.append(
            [
                "tensorboardX (PyTorch not importable)",
                *_imports("tensorboardX", repeat, hide="torch"),
            ]
        )
    emit()
    table(rows, ["import after shoal and numpy", f"time, median of {repeat}", "RSS added"])

    emit("\n## Console (rich: not used, see docs/architecture.md)")
    try:
        import rich  # noqa: F401
    except ImportError:
        emit("rich is not installed: skipped")
        return
    rows = [[m, f"{_import_ms(m, repeat):.1f} ms"] for m in ("rich.table", "rich.progress")]
    table(rows, ["import after shoal and numpy (with rich.console)", f"median of {repeat}"])
    piped = _rich_progress_in_a_pipe()
    lines = piped.splitlines()
    emit(f"\nrich.progress, 5 steps, output a pipe: {len(lines)} line(s) written:")
    for line in lines:
        emit(f"    {line.rstrip()}")


if __name__ == "__main__":
    main()
