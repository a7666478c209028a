"""What confining job code costs (issue 16, finding 1): once per job start.

    python bench/confinement.py [--quick] [--repeat 20]

- start: seconds from spawn to exit of a job process that imports numpy,
  started plainly and through ``python -m shoal.sandbox`` (the launcher
  builds the Landlock ruleset, then execs the same command);
- credential: a worker key pair made at the site plus its certificate
  issued by the server's job credential authority (once per job and site);
- peak RSS of a confined ``python -c pass``: the launcher's own memory (it
  execs the job in its place, so nothing stays resident beside the job).

Nothing here runs per round or per byte: a job's rounds see no cost.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, fmt_s, header, stats, table  # noqa: E402

from shoal.provision.jobcreds import JobCredentialAuthority, new_worker_key  # noqa: E402
from shoal.provision.pki import Identity  # noqa: E402
from shoal.sandbox import Confinement, landlock  # noqa: E402

JOB = "import numpy"


def _timed_run(argv: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - t0


def _peak_kib(argv: list[str], cwd: Path) -> int:
    """Peak RSS of ``argv`` alone, measured by a fresh parent (RUSAGE_CHILDREN
    keeps the largest child a process ever waited for)."""
    probe = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
        "capture_output=True); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *argv], cwd=cwd, check=True, capture_output=True, text=True
    )
    return int(done.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a few repeats only")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    repeat = 3 if args.quick else args.repeat
    header("confinement: the cost of starting job code confined")
    emit(f"Landlock ABI of this kernel: {landlock.abi()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        job = root / "ws" / "jobs" / "j1" / "job"
        job.mkdir(parents=True)
        plan = Confinement.for_job([job], deny=[root / "ws"])
        plain_argv = [sys.executable, "-c", JOB]
        confined_argv = plan.command(plain_argv)
        launcher_kib = _peak_kib(plan.command([sys.executable, "-c", "pass"]), job)
        plain_kib = _peak_kib([sys.executable, "-c", "pass"], job)
        plain, confined = [], []
        for _ in range(repeat):  # interleaved: drift hits both alike
            plain.append(_timed_run(plain_argv, job))
            confined.append(_timed_run(confined_argv, job))
        authority = JobCredentialAuthority.load_or_create(root / "jobca", "server1")
    site = Identity(name="site-1", org="org", type="client", role=None, serial=1)
    creds = []
    for i in range(max(repeat, 10)):
        t0 = time.perf_counter()
        _, public = new_worker_key()
        authority.issue(site, f"job-{i}", public)
        creds.append(time.perf_counter() - t0)
    p, c, k = stats(plain), stats(confined), stats(creds)
    table(
        [
            ["job process start (import numpy), plain", fmt_s(p["median"]), fmt_s(p["max"])],
            ["same, through shoal.sandbox", fmt_s(c["median"]), fmt_s(c["max"])],
            ["added per job start", fmt_s(c["median"] - p["median"]), ""],
            ["worker key pair + certificate", fmt_s(k["median"]), fmt_s(k["max"])],
        ],
        ["what", "median", "max"],
    )
    emit(
        f"peak RSS of `python -c pass`: plain {plain_kib / 1024:.1f} MiB, confined "
        f"{launcher_kib / 1024:.1f} MiB (the launcher's own; it execs the job in its place)"
    )


if __name__ == "__main__":
    main()
