"""Bytes on the wire of a quantized update, and what quantizing costs.

    python bench/quantize.py [--mib 100] [--quick] [--save]

A float32 model of ``--mib`` MiB (4 arrays), a "trained" copy (the model
plus N(0, 0.01)), and the result each setting would send: through the
site's real ``result_out`` chain (``quantize``), encoded exactly as the job
worker uploads it (``shoal.arrays.encode_arrays`` of the weights and
extras: the payload's bytes, before gRPC's framing of a few bytes per
chunk), then through the server's real ``result_in`` chain
(``dequantize``). Printed per setting: payload bytes, the share of the
unquantized payload, seconds to quantize and to dequantize (best of 3),
and the largest error against the exact update.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import MiB, Tee, emit, header, table, write_result  # noqa: E402

from shoal.arrays import encode_arrays  # noqa: E402
from shoal.client.model import FLModel  # noqa: E402
from shoal.filters import build_chain, parse_filters  # noqa: E402
from shoal.taskmeta import join_extras  # noqa: E402


def _chain(point: str, entry: object):  # type: ignore[no-untyped-def]
    specs = parse_filters({point: [entry]}, where="bench")[point]
    return build_chain(point, specs, app_dir=None)


def _best(fn, repeat: int = 3) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mib", type=float, default=100.0)
    ap.add_argument("--quick", action="store_true", help="a 4 MiB model")
    ap.add_argument("--save", action="store_true", help="write bench/results/<date>-quantize.md")
    args = ap.parse_args()
    mib = 4.0 if args.quick else args.mib
    with Tee() as tee:
        run(mib)
    if args.save:
        emit(f"saved {write_result('quantize', tee.text())}")


def run(mib: float) -> None:
    header(f"quantized updates: bytes on the wire for a {mib:g} MiB float32 model")
    rng = np.random.default_rng(0)
    per = int(mib * MiB / 4 / 4)
    received = {f"layer{i}/w": rng.normal(size=per).astype(np.float32) for i in range(4)}
    trained = {k: v + rng.normal(0, 0.01, size=per).astype(np.float32) for k, v in received.items()}
    exact = {k: trained[k] - received[k] for k in received}
    full = encode_arrays(trained).size
    rows = [["none (full float32)", f"{full:,}", "100.0%", "-", "-", "0"]]
    for bits in (16, 8):
        out_chain = _chain("result_out", {"filter": "quantize", "args": {"bits": bits}})
        in_chain = _chain("result_in", "dequantize")
        q_s, sent = _best(
            lambda c=out_chain: c.apply(
                FLModel(params=trained),
                job_id="bench",
                site="site-1",
                round=1,
                task="train",
                reference=received,
            )
        )
        assert isinstance(sent, FLModel)
        wire = encode_arrays(join_extras(sent.params, sent.extras)).size
        d_s, back = _best(
            lambda c=in_chain, m=sent: c.apply(
                m, job_id="bench", site="site-1", round=1, task="train", reference=received
            )
        )
        assert isinstance(back, FLModel)
        err = max(float(np.abs(back.params[k] - exact[k]).max()) for k in exact)
        rows.append(
            [
                f"quantize bits: {bits}",
                f"{wire:,}",
                f"{100 * wire / full:.1f}%",
                f"{q_s:.3f}",
                f"{d_s:.3f}",
                f"{err:.2g}",
            ]
        )
    emit()
    table(
        rows,
        ["result_out", "payload bytes", "of full", "quantize s", "dequantize s", "max abs error"],
    )
    emit()
    emit(
        f"bytes saved per result: 16-bit {full - int(rows[1][1].replace(',', '')):,}, "
        f"8-bit {full - int(rows[2][1].replace(',', '')):,}"
    )


if __name__ == "__main__":
    main()
