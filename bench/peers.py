"""Side by side: shoal against NVIDIA FLARE and Flower on workloads 1-3, one
table of ratios (workload 6).

    bash bench/peers/setup.sh            # once: the peers' own venvs (gitignored)
    python bench/peers.py [--quick]

shoal's figures are measured now, in this process's run, and so is NVIDIA
FLARE's tiny round (``peers_nvflare.py`` drives its POC federation with the
same workload) when its venv exists. The other peer figures are QUOTED from
issue 7 ("measured on this 2-core class of machine": NVIDIA FLARE 2.9.0 POC
mode, Flower 1.42.0 with a SuperLink and two SuperNodes); every figure says
in the table whether it was measured or quoted.
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
    measured: dict[str, float] = {}
    if not args.quick:
        import peers_nvflare

        with contextlib.redirect_stdout(raw):
            nv = peers_nvflare.main(["--rounds", "10"])
        if nv.get("round_median_s"):
            measured["NVIDIA FLARE 2.9.0"] = float(nv["round_median_s"])
    big = next((r for r in tr if "error" not in r), None)
    big_s = big["round_median_s"] if big else None
    big_label = f"{big['size'] // MiB} MiB round" if big else "100 MiB round"
    rows = []
    for name, q in QUOTED.items():
        peer_tiny = measured.get(name, q["tiny"])
        how = "measured now" if name in measured else "quoted"
        rows.append(
            [
                "tiny round (FedAvg, 2 sites)",
                fmt_s(tiny),
                name,
                f"{fmt_s(peer_tiny)} ({how})",
                f"{peer_tiny / tiny:.1f}x faster",
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
    emit("peer figures marked 'quoted' come from issue 7 and were not measured in this run")
    emit()
    emit("## raw shoal output")
    emit(raw.getvalue())
    return {"tiny_s": tiny, "big_s": big_s}


if __name__ == "__main__":
    main()
