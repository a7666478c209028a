"""What a site's policy check costs (issue 21): once per job start.

    python bench/site_policy.py [--quick] [--repeat 200] [--archive-mib 64]

- the policy, unchanged: a ``stat`` of ``local/policy.yml`` (``PolicyCache``);
- the policy, edited: the file parsed again (a full policy, 100 hashes listed);
- job.yml read from the job archive in memory (the archive holds
  ``--archive-mib`` MiB of data beside it, which is never read);
- the decision (``SitePolicy.refusal``) on what those give;
- the launcher setting the caps as rlimits: a confined ``python -c pass``
  with and without caps.

Nothing here runs per round or per byte.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, fmt_s, header, stats, table  # noqa: E402

from shoal.client.policy import JobFacts, PolicyCache, Principal, load_policy  # noqa: E402
from shoal.jobs import read_job_file_in_zip  # noqa: E402
from shoal.sandbox import Confinement  # noqa: E402

POLICY = """\
submitters: {orgs: [a, b, c], roles: [lead, project_admin], admins: [root@c.org]}
code:
  allow: sha256
  sha256: [%s]
workflows: [fedavg, fedprox, scaffold]
filters: {result_out: [clip]}
resources: {memory_mb: 8192, cpu_seconds: 36000, wall_time_s: 86400, processes: 512,
            concurrent_jobs: 2, gpus: ["0"]}
metrics_may_leave: false
"""

JOB_YML = b"""name: bench
min_clients: 2
workflow: {name: fedavg, num_rounds: 10}
client: {script: train.py}
filters: {result_out: [{filter: clip, args: {max_norm: 1.0}}]}
"""


def _fmt(x: float) -> str:
    return f"{x * 1e6:.0f} us" if x < 1e-3 else fmt_s(x)


def _time(fn, repeat: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a few repeats only")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--archive-mib", type=int, default=64)
    args = parser.parse_args()
    repeat = 10 if args.quick else args.repeat
    mib = 1 if args.quick else args.archive_mib
    header("site policy: the cost of judging a job before it is unpacked")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(100)]
        path = root / "policy.yml"
        path.write_text(POLICY % ", ".join(f'"{h}"' for h in hashes))
        cache = PolicyCache(path)
        policy = cache.get()
        unchanged = _time(cache.get, repeat)
        parsed = _time(lambda: load_policy(path), repeat)
        package = root / "job.zip"
        with zipfile.ZipFile(package, "w") as zf:
            zf.writestr("bench/job.yml", JOB_YML)
            zf.writestr("bench/app/train.py", "print('hi')\n")
            zf.writestr("bench/app/data.bin", os.urandom(mib * 2**20))
        peek = _time(lambda: read_job_file_in_zip(package), repeat)
        facts = JobFacts(
            submitter=Principal("alice@a.org", "a", "lead"),
            code_sha256=hashes[-1],
            workflow="fedavg",
            signer=Principal(),
            filters={"result_out": ["clip"], "task_in": []},
            running_jobs=1,
        )
        assert policy.refusal(facts) is None
        decide = _time(lambda: policy.refusal(facts), repeat)
        job = root / "ws" / "jobs" / "j1" / "job"
        job.mkdir(parents=True)
        plain = Confinement.for_job([job], deny=[root / "ws"])
        caps = Confinement(
            **{**plain.__dict__, "memory_mb": 8192, "cpu_seconds": 36000, "processes": 4096}
        )
        argv = [sys.executable, "-c", "pass"]
        runs = max(3, repeat // 20)
        no_caps, with_caps = [], []
        for _ in range(runs):  # interleaved: drift hits both alike
            for plan, into in ((plain, no_caps), (caps, with_caps)):
                t0 = time.perf_counter()
                subprocess.run(plan.command(argv), cwd=job, check=True, capture_output=True)
                into.append(time.perf_counter() - t0)
    rows = []
    for what, xs in (
        ("policy unchanged (stat)", unchanged),
        ("policy edited (parse again, 100 hashes)", parsed),
        (f"job.yml from the archive in memory ({mib} MiB beside it)", peek),
        ("the decision", decide),
        ("confined `python -c pass`, no caps", no_caps),
        ("same, memory + CPU + processes capped", with_caps),
    ):
        s = stats(xs)
        rows.append([what, _fmt(s["median"]), _fmt(s["max"])])
    table(rows, ["what (per job start)", "median", "max"])
    per_job = stats(unchanged)["median"] + stats(peek)["median"] + stats(decide)["median"]
    emit(f"per job start, policy unchanged: {_fmt(per_job)} (stat + job.yml + decision)")


if __name__ == "__main__":
    main()
