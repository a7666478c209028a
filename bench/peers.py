"""Side by side: shoal against NVIDIA FLARE and Flower on workloads 1-3, one
table of ratios (workload 6), each peer at its defaults and tuned as its own
documentation allows.

    bash bench/peers/setup.sh            # once: the peers' own venvs (gitignored)
    python bench/peers.py [--quick] [--rounds 8]

Everything is measured in this run, one system after another on the same
machine: shoal's POC federation (``round_overhead.py``, ``transfer.py`` with
plain grpcio sampled 5 times between its jobs), NVIDIA FLARE's own POC
federation (``peers_nvflare.py``) and a Flower SuperLink with two SuperNodes
(``peers_flower.py``), FedAvg over 2 sites that echo the model back.

Each peer runs at its defaults and tuned, one knob at a time and then all of
them (see the drivers' docstrings for what each knob is and where its docs
are): NVIDIA FLARE's ``task_request_interval`` (0.05 s, as its XGBoost and
scikit-learn examples), FedAvg's ``task_check_period`` (0.05 s) and the Client
API in ``external_process`` mode; Flower's ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``
(0.1 s), and once with SuperNode authentication on. The 100 MiB round runs at
the defaults and with every knob.

Security differs: shoal and NVIDIA FLARE's POC use mutual TLS; Flower 1.42
cannot (server-only TLS; sites can be authenticated by its SuperNode
authentication instead, one row). A peer whose venv is missing falls back to
the figure quoted in issue 7 for its defaults, and the table says so.
``--quick`` runs only shoal's smallest workloads (ratios not meaningful).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import MiB, emit, fmt_s, header, machine, mib, table  # noqa: E402

HERE = Path(__file__).resolve().parent

#: Issue 7's figures for the peers at their defaults (seconds), used only where
#: a peer cannot be run here.
QUOTED = {
    "NVIDIA FLARE": {"tiny": 2.0, "100MiB": 5.0},
    "Flower": {"tiny": 6.1, "100MiB": 8.0},
}

#: NVIDIA FLARE's XGBoost and scikit-learn example jobs set this.
NVFLARE_INTERVAL = ["--task-request-interval", "0.05"]
NVFLARE_CHECK = ["--task-check-period", "0.05"]
NVFLARE_EXTERNAL = ["--exec-mode", "external_process"]
FLOWER_POLL = ["--superexec-poll", "0.1"]


@dataclass(frozen=True)
class PeerRun:
    """One configuration of one peer: which workloads, with which options."""

    peer: str
    venv: str
    options: list[str]
    """Driver options on top of the workload's (empty: the peer's defaults)."""
    big: bool
    """Also run the 100 MiB round in this configuration."""


RUNS = [
    PeerRun("NVIDIA FLARE", "nvflare", [], big=True),
    PeerRun("NVIDIA FLARE", "nvflare", NVFLARE_INTERVAL, big=False),
    PeerRun("NVIDIA FLARE", "nvflare", [*NVFLARE_INTERVAL, *NVFLARE_EXTERNAL], big=False),
    PeerRun(
        "NVIDIA FLARE", "nvflare", [*NVFLARE_INTERVAL, *NVFLARE_CHECK, *NVFLARE_EXTERNAL], big=True
    ),
    PeerRun("Flower", "flwr", [], big=True),
    PeerRun("Flower", "flwr", FLOWER_POLL, big=True),
    PeerRun("Flower", "flwr", ["--supernode-auth"], big=False),
]


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


def _figure(res: dict[str, Any], quoted: float | None) -> tuple[float | None, str]:
    """A peer's round time and where it comes from."""
    if res.get("round_median_s"):
        return res["round_median_s"], "measured now"
    if "error" in res:
        return None, f"failed: {res['error'][:80]}"
    if quoted is not None:
        return quoted, "quoted from issue 7"
    return None, "not run"


def _ratio(theirs: float | None, ours: float | None) -> str:
    if not (theirs and ours):
        return "-"
    x = theirs / ours
    return f"{x:.1f}x" if x < 10 else f"{x:.0f}x"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="shoal's smallest runs only (ratios not meaningful)"
    )
    p.add_argument("--rounds", type=int, default=8, help="rounds of each tiny job (default 8)")
    args = p.parse_args(argv)
    header("side by side: shoal, NVIDIA FLARE and Flower, at their defaults and tuned, one run")
    versions = peer_versions()
    for peer, v in versions.items():
        emit(f"peer venv {peer}: {v}")
    import peers_flower
    import peers_nvflare
    import round_overhead
    import transfer

    drivers = {"nvflare": peers_nvflare.main, "flwr": peers_flower.main}
    raw = io.StringIO()
    ro = _quietly(raw, round_overhead.main, ["--quick"] if args.quick else ["--rounds", "10"])
    tr = _quietly(
        raw,
        transfer.main,
        ["--quick"]
        if args.quick
        else ["--sizes", "100M", "--rounds", "5", "--jobs", "2", "--baseline-samples", "5"],
    )
    big = next((r for r in tr if "error" not in r), None) if isinstance(tr, list) else None
    shoal = {
        "tiny": ro.get("round_median_s") if isinstance(ro, dict) else None,
        "100MiB": big["round_median_s"] if big else None,
        "peaks": (big["server_peak"], big["site_peak"]) if big else None,
        "grpcio": big["base"] if big else None,
        "round_mbps": big["round_mbps"] if big else None,
    }
    results: list[dict[str, Any]] = []
    for run in RUNS:
        version = versions[run.venv]
        installed = version[:1].isdigit()
        label = f"{run.peer} {version}" if installed else run.peer
        tiny_argv = ["--rounds", str(args.rounds)]
        if run.venv == "flwr":
            tiny_argv += ["--size", "4x4"]
        big_argv = ["--size", "100M", "--rounds", "5" if run.venv == "nvflare" else "4"]
        tiny = big_res = {}
        if not args.quick and installed:
            tiny = _quietly(raw, drivers[run.venv], [*tiny_argv, *run.options])
            if run.big:
                big_res = _quietly(raw, drivers[run.venv], [*big_argv, *run.options])
        quoted = QUOTED[run.peer] if not run.options else {}
        results.append(
            {
                "peer": label,
                "options": " ".join(run.options) or "(defaults)",
                "config": tiny.get("config") or " ".join(run.options) or "defaults",
                "security": tiny.get("security"),
                "tiny": _figure(tiny, quoted.get("tiny")),
                "100MiB": _figure(big_res, quoted.get("100MiB")) if run.big else None,
                "peaks": _peaks(big_res),
            }
        )

    rows = []
    skipped = 0
    for what, key in (("tiny round (FedAvg, 2 sites)", "tiny"), ("100 MiB round", "100MiB")):
        ours = shoal[key]
        for r in results:
            if r[key] is None:
                continue
            theirs, how = r[key]
            if how == "not run":
                skipped += 1
                continue
            rows.append(
                [
                    what,
                    fmt_s(ours) if ours else "n/a",
                    r["peer"],
                    r["config"],
                    f"{fmt_s(theirs)} ({how})" if theirs else how,
                    _ratio(theirs, ours),
                ]
            )
    for r in results:
        if shoal["peaks"] and r["peaks"]:
            (s_srv, s_site), (p_srv, p_site) = shoal["peaks"], r["peaks"]
            rows.append(
                [
                    "100 MiB: peak RSS server / worst site",
                    f"{mib(s_srv)} / {mib(s_site)}",
                    r["peer"],
                    r["config"],
                    f"{mib(p_srv)} / {mib(p_site)} (measured now)",
                    f"{p_srv / s_srv:.1f}x / {p_site / s_site:.1f}x",
                ]
            )
    emit()
    table(rows, ["workload", "shoal", "peer", "peer configuration", "peer", "peer / shoal"])
    emit(
        "s/round: median of rounds 2..N of one job (shoal's 100 MiB: of 2 jobs); peak RSS: VmHWM "
        "of each daemon plus its job processes; the model is "
        f"{100 * MiB} bytes of random float32 in 8 arrays everywhere"
    )
    if skipped:
        emit(f"{skipped} tuned peer figures not run (--quick, or the peer's venv is missing)")
    base = shoal["grpcio"]
    if base and shoal["round_mbps"]:
        ratio = shoal["round_mbps"] / base["mbps"]
        lo, hi = shoal["round_mbps"] / base["mbps_max"], shoal["round_mbps"] / base["mbps_min"]
        emit(
            f"shoal's 100 MiB round against plain grpcio mTLS (same bytes, same kits, "
            f"{len(base['samples'])} samples between its jobs): {ratio:.0%} of the median sample "
            f"({base['mbps']:.0f} MB/s, {fmt_s(base['wall_s'])}); {lo:.0%}-{hi:.0%} against the "
            f"fastest and the slowest ({base['mbps_max']:.0f} / {base['mbps_min']:.0f} MB/s)"
        )
    emit(
        "security: shoal and NVIDIA FLARE's POC run mutual TLS; Flower 1.42 has no client "
        "certificates (server-only TLS in every Flower row), its rows say when its SuperNode "
        "authentication was on"
    )
    for r in results:
        if r["security"]:
            emit(f"    {r['peer']} ({r['config']}): {r['security']}")
    emit(
        "the machine is shared (other engineers' tests run on the same 2 cores): load average "
        f"at the end {machine().get('loadavg', '?')}; every figure is a median over rounds, "
        "and the ratios compare figures from this one run"
    )
    emit()
    emit("## raw output of each run")
    emit(raw.getvalue())
    return {"shoal": shoal, "peers": results}


if __name__ == "__main__":
    main()
