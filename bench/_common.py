"""Shared plumbing for the benchmarks: the header, a bench job, a POC federation,
peak-RSS sampling and small statistics. Not a public API.

Every script prints ``header()`` first so a figure is never separated from the
command, machine and versions that made it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shoal.admin.results import JobMeta

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
GiB = 1024 * MiB


# -- the header ----------------------------------------------------------------


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cores": os.cpu_count()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gib"] = round(int(line.split()[1]) / 1024**2, 1)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    info.setdefault("cpu", platform.processor() or platform.machine())
    with contextlib.suppress(OSError):
        info["loadavg"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return info


def versions() -> dict[str, str]:
    import grpc
    import numpy

    import shoal

    return {
        "python": platform.python_version(),
        "shoal": shoal.__version__,
        "grpcio": grpc.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }


def header(title: str) -> str:
    """Print and return the header: command, date, machine, versions."""
    m = machine()
    v = versions()
    cmd = "python " + " ".join(
        shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]
    )
    lines = [
        f"# {title}",
        f"command: {cmd}",
        f"date:    {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
        f"machine: {m['cores']} cores, {m.get('ram_gib', '?')} GiB RAM, {m['cpu']}; "
        f"load average at start {m.get('loadavg', '?')}",
        f"versions: Python {v['python']}, shoal {v['shoal']}, grpcio {v['grpcio']}, "
        f"numpy {v['numpy']}; {v['platform']}",
    ]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def emit(line: str = "") -> None:
    print(line, flush=True)


def table(rows: Sequence[Sequence[Any]], head: Sequence[str]) -> str:
    """A markdown table (printed and returned)."""
    cells = [[str(c) for c in head], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    out = [fmt(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [fmt(r) for r in cells[1:]]
    text = "\n".join(out)
    emit(text)
    return text


def stats(xs: Sequence[float]) -> dict[str, float]:
    s = sorted(xs)
    if not s:
        return {"n": 0}
    p90 = s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]
    return {
        "n": len(s),
        "min": s[0],
        "median": statistics.median(s),
        "mean": statistics.fmean(s),
        "p90": p90,
        "max": s[-1],
    }


def round_times(rounds: Sequence[Mapping[str, Any]]) -> list[float]:
    """Seconds per round from a job's metrics.jsonl: from one round's task
    going out (``started``) to the next one's, which is what the job's wall
    clock sees (a round's ``duration_s`` ends when its model is written; the
    flush to disk, the checkpoint and the metrics overlap the next round's
    downloads). The last round has no next: ``len(rounds) - 1`` figures."""
    starts = [float(r["started"]) for r in rounds]
    return [b - a for a, b in itertools.pairwise(starts)]


def fmt_s(x: float) -> str:
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


# -- the bench job -----------------------------------------------------------------

_MODEL_PY = '''\
"""Bench model: random float32 arrays of a fixed total size (random, so that
identical chunks cannot flatter a transfer figure)."""
import numpy as np

TOTAL_BYTES = {total_bytes}
NUM_ARRAYS = {num_arrays}


def initial_weights():
    rng = np.random.default_rng(1234)
    n = max(1, TOTAL_BYTES // 4 // NUM_ARRAYS)
    return {{f"layer{{i:03d}}": rng.random(n, dtype=np.float32) for i in range(NUM_ARRAYS)}}
'''

_TRAIN_PY = '''\
"""Bench site script: near-zero local work; echo the global model back.

Prints "BENCH first_task <unix time>" when the first task arrives (for the
submit -> first task figure) and configures logging so the worker's own
"Received from server. getTask" lines reach the job log.
"""
import logging
import time

import shoal.client as fl

if {log}:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
fl.init()
first = True
while fl.is_running():
    task = fl.receive()
    if first:
        print(f"BENCH first_task {{time.time():.6f}}", flush=True)
        first = False
    fl.send(fl.FLModel(params=task.params, metrics={{"loss": 0.0}}, num_examples={num_examples}))
'''


def write_job(
    parent: Path,
    *,
    name: str = "bench",
    num_rounds: int,
    model_bytes: int,
    num_arrays: int = 1,
    min_clients: int = 1,
    sample_fraction: float = 1.0,
    round_timeout_s: float = 3600,
    num_examples: int = 10,
    log: bool = True,
    workflow: str = "fedavg",
    params: Mapping[str, Any] | None = None,
) -> Path:
    """Write a numpy job (FedAvg unless ``workflow`` and its ``params`` say
    otherwise; no server evaluate hook) into ``parent/name``."""
    job = parent / name
    (job / "app").mkdir(parents=True, exist_ok=True)
    wf = [
        "workflow:",
        f"  name: {workflow}",
        f"  num_rounds: {num_rounds}",
        f"  round_timeout_s: {round_timeout_s}",
        *(f"  {k}: {v}" for k, v in (params or {}).items()),
    ]
    if sample_fraction < 1:
        wf.append(f"  sample_fraction: {sample_fraction}")
    (job / "job.yml").write_text(
        "\n".join(
            [
                f"name: {name}",
                f"min_clients: {min_clients}",
                *wf,
                "client:",
                "  script: train.py",
                "server:",
                '  initial_weights: "model:initial_weights"',
                "",
            ]
        )
    )
    (job / "app" / "model.py").write_text(
        _MODEL_PY.format(total_bytes=model_bytes, num_arrays=num_arrays)
    )
    (job / "app" / "train.py").write_text(_TRAIN_PY.format(num_examples=num_examples, log=log))
    return job


# -- a POC federation ---------------------------------------------------------------


@dataclass
class Fed:
    workspace: Path
    layout: Any
    session: Any
    started_s: float = 0.0

    def pid(self, name: str) -> int:
        from shoal import poc

        p = poc.status(self.workspace)["processes"][name]["pid"]
        return int(p)

    @property
    def server_dir(self) -> Path:
        return Path(self.layout.server_kit)

    def job_dir(self, job_id: str) -> Path:
        return self.server_dir / "jobs" / job_id

    def site_job_log(self, site: str, job_id: str) -> Path:
        return Path(self.layout.site_kits[site]) / "jobs" / job_id / "log.txt"

    def server_log(self) -> Path:
        return self.server_dir / "log.txt"


@contextlib.contextmanager
def federation(
    num_sites: int = 2, *, tmp: Path | None = None, timeout: float = 120
) -> Iterator[Fed]:
    """A real POC federation (server + N site daemons, mTLS on loopback)."""
    from shoal import poc

    with tempfile.TemporaryDirectory(prefix="shoal-bench-", dir=tmp) as d:
        ws = Path(d) / "poc"
        poc.prepare(ws, num_sites=num_sites)
        t0 = time.monotonic()
        try:
            layout = poc.start(ws, timeout=timeout)
            started = time.monotonic() - t0
            with poc.admin_session(ws, timeout=60) as s:
                yield Fed(ws, layout, s, started)
        finally:
            poc.stop(ws)


@dataclass
class JobRun:
    job_id: str
    submit_wall: float
    submitted_mono: float
    finished_mono: float
    meta: JobMeta
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def submit_to_finished_s(self) -> float:
        return self.finished_mono - self.submitted_mono


def run_job(fed: Fed, job: Path, *, timeout: float = 3600, poll_s: float = 0.01) -> JobRun:
    """Submit ``job``, wait (polling every ``poll_s``) until FINISHED; read metrics.jsonl."""
    from shoal import jobstatus

    wall = time.time()
    t0 = time.monotonic()
    job_id = fed.session.submit_job(job)
    deadline = t0 + timeout
    while True:
        meta = fed.session.get_job_meta(job_id)
        if jobstatus.is_finished(meta.status):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {meta.status} after {timeout} s")
        time.sleep(poll_s)
    t1 = time.monotonic()
    if meta.status != jobstatus.COMPLETED:
        raise RuntimeError(f"job {job_id} ended {meta.status}: {meta.error}")
    metrics = fed.job_dir(job_id) / "run" / "metrics.jsonl"
    rounds = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    return JobRun(job_id, wall, t0, t1, meta, rounds)


def first_task_wall(fed: Fed, site: str, job_id: str) -> float | None:
    path = fed.site_job_log(site, job_id)
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("BENCH first_task "):
                return float(line.split()[2])
    return None


_SENT = re.compile(r"sent train task of round (\d+) to (\S+): \S+ in ([\d.]+) s")
_RECV = re.compile(r"received result from (\S+) for round (\d+): \S+ in ([\d.]+) s")


def transfer_times(fed: Fed, job_id: str) -> dict[str, list[float]]:
    """Per-site send (server -> site) and receive (site -> server) seconds from the server log."""
    out: dict[str, list[float]] = {"down": [], "up": []}
    for line in fed.server_log().read_text(errors="replace").splitlines():
        if job_id not in line:
            continue
        m = _SENT.search(line)
        if m:
            out["down"].append(float(m.group(3)))
            continue
        m = _RECV.search(line)
        if m:
            out["up"].append(float(m.group(3)))
    return out


# -- peak RSS ----------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of ``pid`` in bytes ({} once it is gone)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                key, val = line.split(":", 1)
                out[key] = int(val.split()[0]) * 1024
    return out


def children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                kids += [int(x) for x in (task / "children").read_text().split()]
    return kids


def descendants(pid: int) -> list[int]:
    """Children, grandchildren, ... of ``pid`` alive now."""
    out, todo = [], [pid]
    while todo:
        for kid in children(todo.pop()):
            out.append(kid)
            todo.append(kid)
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid``, of its children it has reaped, and of its live descendants."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    own = sum(int(x) for x in fields[11:15]) / _TICK  # utime stime cutime cstime
    return own + sum(cpu_seconds(kid) for kid in children(pid))


#: rounds ended -> {group: CPU seconds of its processes} when that was first seen
Marks = dict[int, dict[str, float]]


@contextlib.contextmanager
def round_marks(jobs_dir: Path, groups: Mapping[str, Sequence[int]]) -> Iterator[Marks]:
    """Sample the CPU of each group of processes (and their descendants)
    each time a round ends (a line lands in the metrics.jsonl of a job that
    starts after this is entered), from a thread, while the caller waits for
    the job."""
    marks: Marks = {}
    stop = threading.Event()
    # Jobs that ran before this one (a bench may run several in one federation).
    before = set(jobs_dir.glob("*/run/metrics.jsonl"))

    def sample() -> None:
        while not stop.wait(0.01):
            ended = 0
            for m in jobs_dir.glob("*/run/metrics.jsonl"):
                if m in before:
                    continue
                with contextlib.suppress(OSError):
                    ended = m.read_bytes().count(b"\n")
            if ended and ended not in marks:
                marks[ended] = {
                    name: sum(cpu_seconds(p) for p in pids) for name, pids in groups.items()
                }

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield marks
    finally:
        stop.set()
        thread.join()


def cpu_per_round(marks: Marks, first: int) -> dict[str, float] | None:
    """Mean CPU seconds per round of each group, between the first and the
    last round ends seen from round ``first`` on."""
    seen = sorted(r for r in marks if r >= first)
    if len(seen) < 2:
        return None
    a, b = marks[seen[0]], marks[seen[-1]]
    n = seen[-1] - seen[0]
    return {name: (b[name] - a[name]) / n for name in a}


class PeakSampler:
    """Samples VmHWM of some root processes and their children every ``interval`` s.

    VmHWM is the kernel's own high-water mark, so a sample only has to land
    before a process exits: growth in its last ``interval`` is the only blind spot.
    """

    def __init__(self, roots: dict[str, int], interval: float = 0.05) -> None:
        self.roots = roots
        self.interval = interval
        self.peak: dict[tuple[str, str], int] = {}  # (root name, "self"|"child") -> bytes
        self._stop = threading.Event()
        self._child_peak: dict[tuple[str, int], int] = {}
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        for name, pid in self.roots.items():
            hwm = proc_status(pid).get("VmHWM", 0)
            key = (name, "self")
            self.peak[key] = max(self.peak.get(key, 0), hwm)
            for kid in children(pid):
                h = proc_status(kid).get("VmHWM", 0)
                ck = (name, kid)
                self._child_peak[ck] = max(self._child_peak.get(ck, 0), h)
                key = (name, "child")
                self.peak[key] = max(self.peak.get(key, 0), self._child_peak[ck])

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def total(self, name: str) -> int:
        """Peak of the root plus the peak of its largest child (a job process)."""
        return self.peak.get((name, "self"), 0) + self.peak.get((name, "child"), 0)


def mib(n: float) -> str:
    return f"{n / MiB:.0f} MiB"


def write_result(name: str, text: str) -> Path:
    """Save ``text`` as bench/results/<date>-<name>.md."""
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    path = ROOT / "bench" / "results" / f"{day}-{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


class Tee:
    """Collect what a script prints so it can be saved as a result file."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self._orig = sys.stdout

    def __enter__(self) -> Tee:
        sys.stdout = self  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stdout = self._orig

    def write(self, s: str) -> int:
        self.parts.append(s)
        return self._orig.write(s)

    def flush(self) -> None:
        self._orig.flush()

    def text(self) -> str:
        return "".join(self.parts)


def run_job_sampled(fed: Fed, job: Path, *, timeout: float = 3600) -> tuple[JobRun, PeakSampler]:
    """Run ``job`` while sampling the peak RSS of the server and every site
    (each with its children: workflow process, job workers)."""
    roots = {"server": fed.pid("server1")}
    roots.update({s: fed.pid(s) for s in fed.layout.site_kits})
    with PeakSampler(roots) as peaks:
        # Rounds are timed from metrics.jsonl, not by this poll: a 10 ms admin
        # poll cost this process ~12% of a core and the server's admin port
        # as much, taken from the rounds being measured (perf, 100 MiB).
        run = run_job(fed, job, timeout=timeout, poll_s=0.2)
    return run, peaks
