"""What the audit trail costs: one event written, durable or not, and a verify.

    python bench/audit.py [--quick] [--events N]

- ``record()`` with ``durable=True`` (fsync of the trail, then of the anchor)
  and with ``durable=False`` (written, no fsync): events per second and
  milliseconds each, on the folder the bench runs in (the disk a workspace
  would use);
- ``verify_trail`` over the trail just written: lines per second, with 16 KiB
  rotation (many files) and without;
- the bytes one ``admin.command`` line takes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, header, table  # noqa: E402

from shoal.audit import AuditTrail, trail_files, verify_trail  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _write(folder: Path, events: int, *, durable: bool, max_bytes: int) -> tuple[float, Path]:
    trail = AuditTrail(folder / "audit.jsonl", actor="server1", max_bytes=max_bytes)
    t0 = time.perf_counter()
    for i in range(events):
        trail.record(
            "admin.command",
            durable=durable,
            command="get_job_meta",
            caller="admin@nvidia.com",
            org="nvidia",
            role="project_admin",
            outcome="ok",
            args={"job_id": f"c8973f05-8787-41c5-8568-{i:012d}"},
        )
    return time.perf_counter() - t0, trail.path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="200 events")
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    events = 200 if args.quick else args.events
    header("audit trail: record and verify")
    rows = []
    verify_rows = []
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        for durable in (True, False):
            for max_bytes in (16 * 2**20, 16 * 2**10):
                folder = Path(tmp) / f"{durable}-{max_bytes}"
                seconds, path = _write(folder, events, durable=durable, max_bytes=max_bytes)
                files = trail_files(path)
                rows.append(
                    [
                        "durable (fsync)" if durable else "not durable",
                        f"{max_bytes // 1024} KiB",
                        events,
                        f"{events / seconds:,.0f}",
                        f"{seconds / events * 1000:.3f}",
                        len(files),
                    ]
                )
                if durable:
                    continue
                t0 = time.perf_counter()
                report = verify_trail(path)
                took = time.perf_counter() - t0
                assert report.ok, report.problem
                verify_rows.append(
                    [
                        f"{max_bytes // 1024} KiB",
                        report.lines,
                        len(files),
                        f"{report.lines / took:,.0f}",
                    ]
                )
                line_bytes = sum(f.stat().st_size for f in files) / report.lines
    emit()
    table(rows, ["record()", "rotation", "events", "events/s", "ms/event", "files"])
    emit()
    table(verify_rows, ["rotation", "lines", "files", "verify lines/s"])
    emit(f"\nbytes per admin.command line: {line_bytes:.0f}")


if __name__ == "__main__":
    main()
