"""Side by side: shoal against NVIDIA FLARE and Flower on workloads 1-3, one
table of ratios (workload 6).

    bash bench/peers/setup.sh            # once: the peers' own venvs (gitignored)
    python bench/peers.py [--quick]

shoal's figures are measured now, in this process's run. The peers' figures
are, for now, QUOTED from issue 7 ("measured on this 2-core class of
machine": NVIDIA FLARE 2.9.0 POC mode with its provisioned mTLS, Flower
1.42.0 with a SuperLink and two SuperNodes), not measured here: this script
does not yet drive the peers' federations (see bench/README.md). Every quoted
figure is labelled so in the table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import MiB, emit, fmt_s, header, table  # noqa: E402

HERE = Path(__file__).resolve().parent

#: Issue 7's figures for the peers (seconds; None: did not fit in 24 GB).
QUOTED = {
    "NVIDIA FLARE 2.9.0": {"tiny": 2.0, "100MiB": 5.0, "1GiB": None},
    "Flower 1.42.0": {"tiny": 6.1, "100MiB": 8.0, "1GiB": None},
}


def peer_versions() -> dict[str, str]:
    out = {}
    for peer, pkg in (("nvflare", "nvflare"), ("flwr", "flwr")):
        py = HERE / "peers" / peer / "venv" / "bin" / "python"
        if not py.exists():
            out[peer] = "not installed (run bench/peers/setup.sh)"
            continue
        r = subprocess.run(
            [str(py), "-c", f"import importlib.metadata as m; print(m.version('{pkg}'))"],
            capture_output=True,
            text=True,
        )
        out[peer] = r.stdout.strip() or f"broken venv: {r.stderr.strip()[-200:]}"
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="shoal's smallest runs (ratios not meaningful)"
    )
    args = p.parse_args(argv)
    header("side by side: shoal (measured) vs NVIDIA FLARE and Flower")
    for peer, v in peer_versions().items():
        emit(f"peer venv {peer}: {v}")
    import round_overhead
    import transfer

    # Run shoal's workloads quietly; their own output goes to the raw section.
    raw = io.StringIO()
    with contextlib.redirect_stdout(raw):
        ro = round_overhead.main(["--quick"] if args.quick else ["--rounds", "10"])
        tr = transfer.main(["--quick"] if args.quick else ["--sizes", "100M", "--rounds", "3"])
    tiny = ro["round_median_s"]
    big = next((r for r in tr if "error" not in r), None)
    big_s = big["round_median_s"] if big else None
    big_label = f"{big['size'] // MiB} MiB round" if big else "100 MiB round"
    rows = []
    for name, q in QUOTED.items():
        rows.append(
            [
                "tiny round (FedAvg, 2 sites)",
                fmt_s(tiny),
                name,
                f"{fmt_s(q['tiny'])} (quoted)",
                f"{q['tiny'] / tiny:.1f}x faster",
            ]
        )
        if big_s is not None:
            rows.append(
                [
                    big_label,
                    fmt_s(big_s),
                    name,
                    f"{fmt_s(q['100MiB'])} (quoted, 100 MiB)",
                    f"{q['100MiB'] / big_s:.1f}x"
                    + (" (sizes differ: --quick)" if args.quick else ""),
                ]
            )
        rows.append(["1 GiB round", "see transfer.py", name, "did not fit in 24 GB (quoted)", "-"])
    emit()
    table(rows, ["workload", "shoal (measured now)", "peer", "peer", "peer time / shoal time"])
    emit("peer figures: QUOTED from issue 7, not measured in this run")
    emit()
    emit("## raw shoal output")
    emit(raw.getvalue())
    return {"tiny_s": tiny, "big_s": big_s}


if __name__ == "__main__":
    main()
