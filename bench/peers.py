"""Side by side: shoal against NVIDIA FLARE and Flower on workloads 1-3, one
table of ratios (workload 6).

    bash bench/peers/setup.sh            # once: the peers' own venvs (gitignored)
    python bench/peers.py [--quick]

Everything is measured in this run, one system after another on the same
machine: shoal's POC federation (``round_overhead.py``, ``transfer.py``),
NVIDIA FLARE's own POC federation (``peers_nvflare.py``) and a Flower
SuperLink with two SuperNodes (``peers_flower.py``), each with its own mutual
TLS, FedAvg over 2 sites that echo the model back. A peer whose venv is
missing falls back to the figure quoted in issue 7, and the table says so.
``--quick`` runs only shoal's smallest workloads (ratios not meaningful).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import MiB, emit, fmt_s, header, mib, table  # noqa: E402

HERE = Path(__file__).resolve().parent

#: Issue 7's figures for the peers (seconds; None: did not fit in 24 GB),
#: used only where a peer cannot be run here.
QUOTED = {
    "NVIDIA FLARE 2.9.0": {"tiny": 2.0, "100MiB": 5.0},
    "Flower 1.42.0": {"tiny": 6.1, "100MiB": 8.0},
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


def _quietly(raw: io.StringIO, fn: Callable[[list[str]], Any], argv: list[str]) -> Any:
    """Run a bench's main() with its output kept for the raw section; failures are reported."""
    with contextlib.redirect_stdout(raw):
        try:
            return fn(argv)
        except Exception as exc:  # one peer failing must not lose the others' figures
            print(f"FAILED {fn.__module__} {argv}: {type(exc).__name__}: {exc}")
            return {"error": f"{type(exc).__name__}: {exc}"}


def _peaks(res: dict[str, Any]) -> tuple[int, int] | None:
    """(server side, worst site) peak RSS from a peer's ``peak_rss`` (server first)."""
    peaks = list((res.get("peak_rss") or {}).values())
    if len(peaks) < 2:
        return None
    return peaks[0], max(peaks[1:])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="shoal's smallest runs only (ratios not meaningful)"
    )
    args = p.parse_args(argv)
    header("side by side: shoal, NVIDIA FLARE and Flower, measured in one run")
    versions = peer_versions()
    for peer, v in versions.items():
        emit(f"peer venv {peer}: {v}")
    import peers_flower
    import peers_nvflare
    import round_overhead
    import transfer

    raw = io.StringIO()
    ro = _quietly(raw, round_overhead.main, ["--quick"] if args.quick else ["--rounds", "10"])
    tr = _quietly(
        raw, transfer.main, ["--quick"] if args.quick else ["--sizes", "100M", "--rounds", "5"]
    )
    big = next((r for r in tr if "error" not in r), None) if isinstance(tr, list) else None
    shoal = {
        "tiny": ro.get("round_median_s") if isinstance(ro, dict) else None,
        "100MiB": big["round_median_s"] if big else None,
        "peaks": (big["server_peak"], big["site_peak"]) if big else None,
    }
    peers: dict[str, dict[str, Any]] = {}
    runners = {
        "NVIDIA FLARE": (
            "nvflare",
            peers_nvflare.main,
            ["--rounds", "10"],
            ["--size", "100M", "--rounds", "5"],
        ),
        "Flower": (
            "flwr",
            peers_flower.main,
            ["--size", "4x4", "--rounds", "10"],
            ["--size", "100M", "--rounds", "4"],
        ),
    }
    for name, (venv, fn, tiny_argv, big_argv) in runners.items():
        version = versions[venv]
        label = f"{name} {version}" if version[:1].isdigit() else name
        quoted = next(q for k, q in QUOTED.items() if k.startswith(name))
        tiny = big_res = {}
        if not args.quick and version[:1].isdigit():
            tiny = _quietly(raw, fn, tiny_argv)
            big_res = _quietly(raw, fn, big_argv)
        peers[label] = {
            "tiny": (tiny.get("round_median_s"), "measured now")
            if tiny.get("round_median_s")
            else (quoted["tiny"], "quoted from issue 7"),
            "100MiB": (big_res.get("round_median_s"), "measured now")
            if big_res.get("round_median_s")
            else (quoted["100MiB"], "quoted from issue 7"),
            "peaks": _peaks(big_res),
        }

    rows = []
    for label, peer in peers.items():
        for key, what in (("tiny", "tiny round (FedAvg, 2 sites)"), ("100MiB", "100 MiB round")):
            ours = shoal[key]
            theirs, how = peer[key]
            rows.append(
                [
                    what,
                    fmt_s(ours) if ours else "n/a",
                    label,
                    f"{fmt_s(theirs)} ({how})",
                    f"{theirs / ours:.1f}x" if ours else "-",
                ]
            )
        if shoal["peaks"] and peer["peaks"]:
            (s_srv, s_site), (p_srv, p_site) = shoal["peaks"], peer["peaks"]
            rows.append(
                [
                    "100 MiB: peak RSS server / worst site",
                    f"{mib(s_srv)} / {mib(s_site)}",
                    label,
                    f"{mib(p_srv)} / {mib(p_site)} (measured now)",
                    f"{p_srv / s_srv:.1f}x / {p_site / s_site:.1f}x",
                ]
            )
    emit()
    table(rows, ["workload", "shoal", "peer", "peer", "peer / shoal"])
    emit(
        "s/round: median of rounds 2..N; peak RSS: VmHWM of each daemon plus its job "
        f"processes; the model is {100 * MiB} bytes of random float32 in 8 arrays everywhere"
    )
    emit()
    emit("## raw output of each run")
    emit(raw.getvalue())
    return {"shoal": shoal, "peers": peers}


if __name__ == "__main__":
    main()
