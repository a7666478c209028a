"""Run every benchmark and write the dated results file.

    python bench/run_all.py [--quick] [--only round_overhead,transfer,...] [--out PATH]

Each script runs in its own process (its own peak RSS, no state carried over)
and prints its own header (command, date, machine, versions); its whole output
goes verbatim into ``bench/results/<date>-<name>.md`` (``<date>-quick.md``
with ``--quick``), next to how long it took and its exit code. A script that
fails is recorded as failed and the others still run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, header  # noqa: E402

#: In the issue's priority order.
SCRIPTS = [
    "round_overhead",
    "transfer",
    "memory",
    "algorithms",
    "simulator",
    "scale",
    "poc_startup",
    "peers",
    "host_costs",
    "torch_adapter",
    "tracking",
    "secagg",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="every script in its smallest mode")
    p.add_argument("--only", default=",".join(SCRIPTS))
    p.add_argument("--name", default=None, help="results file name (default: all / quick)")
    p.add_argument("--out", type=Path, default=None, help="write here instead of bench/results/")
    p.add_argument("--timeout", type=float, default=3600.0, help="per script, seconds")
    args = p.parse_args(argv)
    head = header(
        "shoal benchmarks" + (" (quick mode: smoke sizes, not figures)" if args.quick else "")
    )
    parts = [head, ""]
    failed = 0
    for name in [s for s in args.only.split(",") if s]:
        cmd = [sys.executable, str(ROOT / "bench" / f"{name}.py")]
        if args.quick:
            cmd.append("--quick")
        print(f"\n=== {name}", flush=True)
        t0 = time.monotonic()
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT
            )
            out, code = proc.stdout, proc.returncode
            if code != 0:
                out += "\n--- stderr (tail)\n" + "\n".join(proc.stderr.splitlines()[-30:])
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout) or ""
            out += f"\n--- TIMED OUT after {args.timeout:.0f} s"
            code = -1
        took = time.monotonic() - t0
        failed += code != 0
        print(out, flush=True)
        parts += [
            f"## {name}",
            "",
            f"exit code {code}, {took:.0f} s",
            "",
            "```",
            out.rstrip(),
            "```",
            "",
        ]
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    path = (
        args.out
        or ROOT
        / "bench"
        / "results"
        / f"{day}-{args.name or ('quick' if args.quick else 'all')}.md"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n")
    print(f"\nwrote {path}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
