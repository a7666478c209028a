"""Scale: one server with 100, 500 and 1000 connected sites on loopback (workload 4):
registration time, idle CPU of heartbeats, time and CPU of one round with a tiny
model; where it breaks and why.

    python bench/scale.py [--quick] [--sites 100,500,1000] [--hosts 8] [--daemons]

Every site has its own provisioned kit (``shoal.poc.prepare(num_sites=N)``:
identity is the certificate's CN). The server is a real daemon process. The
sites are light asyncio clients started by the bench, many per process over
``--hosts`` processes (``bench/_site_host.py``): each with its own mTLS
channel, Connect stream, heartbeats, job fetch and reports, and a job worker
(own channel, real GetTask / PutResult) that echoes the model instead of
running the job's script. A production site is a ``SiteDaemon`` (threads)
that starts a worker process per job: a thousand of those would use more of
the machine than the server they load. ``--daemons`` runs real
``SiteDaemon``s with worker processes instead (rounds only for N <=
``--round-max``).

* registration: hosts started -> the server lists all N sites connected;
* idle CPU: CPU seconds used by the server and by all site hosts over
  ``--idle`` seconds of heartbeats only, as % of one core;
* round: a 4-round tiny job with min_clients = N; a round from its task
  going out to the next one's (metrics.jsonl ``started``), rounds 2..3
  (round 1 also waits for N job workers to start): median time, and CPU
  seconds per round of the server (daemon + workflow process) and of the
  site hosts, apart.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    Fed,
    cpu_per_round,
    cpu_seconds,
    emit,
    fmt_s,
    header,
    round_marks,
    round_times,
    run_job,
    table,
    write_job,
)

HERE = Path(__file__).resolve().parent


def connected(session) -> int:  # type: ignore[no-untyped-def]
    return len(session.check_status().connected)


def _tail(path: Path, n: int = 600) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip()
    except OSError:
        return ""


def measure(
    n: int, hosts: int, idle_s: float, round_max: int, tmp: Path, daemons: bool, hb_timeout: float
) -> dict:
    from shoal import poc

    out: dict = {"sites": n}
    ws = tmp / f"scale{n}"
    t0 = time.monotonic()
    layout = poc.prepare(ws, num_sites=n)
    out["provision_s"] = time.monotonic() - t0
    log = open(ws / "server.out", "wb")  # noqa: SIM115
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shoal",
            "server",
            "--kit",
            str(layout.server_kit),
            "--host",
            "127.0.0.1",
            "--heartbeat-timeout",
            str(hb_timeout),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    procs: list[subprocess.Popen] = []
    errs = [ws / f"site-host-{i}.err" for i in range(hosts)]
    try:
        ready = layout.server_kit / "server_ready.json"
        while not ready.exists():
            if server.poll() is not None:
                raise RuntimeError("server exited at start-up")
            time.sleep(0.05)
        session = poc.admin_session(ws, timeout=60)
        kits = [str(k) for k in layout.site_kits.values()]
        t0 = time.monotonic()
        for i, err in enumerate(errs):
            # stderr to a file: a pipe nobody reads would block a host that logs a lot.
            with open(err, "wb") as f:
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            str(HERE / "_site_host.py"),
                            *(["--daemons"] if daemons else []),
                            layout.fed_address,
                            *kits[i::hosts],
                        ],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.DEVNULL,
                        stderr=f,
                    )
                )
        deadline = t0 + 300
        up = 0
        while time.monotonic() < deadline:
            up = connected(session)
            if up >= n:
                break
            for p, err in zip(procs, errs, strict=True):
                if p.poll() is not None:
                    raise RuntimeError(f"a site host exited: {_tail(err)}")
            time.sleep(0.2)
        out["register_s"] = time.monotonic() - t0
        out["registered"] = up
        if up < n:
            out["note"] = f"only {up}/{n} registered within 300 s"
            return out
        # Idle: let start-up settle, then count CPU over heartbeats only.
        time.sleep(3)
        pids = [server.pid] + [p.pid for p in procs]
        before = [cpu_seconds(p) for p in pids]
        time.sleep(idle_s)
        after = [cpu_seconds(p) for p in pids]
        out["idle_server_pct"] = 100 * (after[0] - before[0]) / idle_s
        out["idle_hosts_pct"] = (
            100 * sum(a - b for a, b in zip(after[1:], before[1:], strict=True)) / idle_s
        )
        out["server_rss_mib"] = _rss(server.pid) / 2**20
        out["hosts_rss_mib"] = sum(_rss(p.pid) for p in procs) / 2**20
        if not daemons or n <= round_max:
            job = write_job(
                tmp,
                name=f"tiny-job-{n}",
                num_rounds=4,  # start to start: rounds 1..3, of which 2..3 steady
                model_bytes=64,
                min_clients=n,
                log=False,
                round_timeout_s=180,
            )
            fed = Fed(ws, layout, session)
            out["workers"] = "SiteDaemons, worker processes" if daemons else "asyncio sites"
            hosts_pids = [p.pid for p in procs]
            try:
                # Poll gently: at 1000 sites the admin calls compete with the round.
                groups = {"server": [server.pid], "hosts": hosts_pids}
                with round_marks(fed.server_dir / "jobs", groups) as marks:
                    r = run_job(fed, job, timeout=1800, poll_s=0.2)
            except (RuntimeError, TimeoutError) as exc:
                out["note"] = f"round failed: {exc}"[:300]
                out["worker_failures"] = _worker_failures(layout.server_kit / "log.txt")
                host_errors = [t for t in (_tail(e, 300) for e in errs) if t]
                if host_errors:
                    out["site_host_stderr"] = host_errors[:2]
            else:
                out["round_s"] = round_times(r.rounds)
                out["job_s"] = r.submit_to_finished_s
                per_round = cpu_per_round(marks, first=1)
                if per_round is not None:
                    out["round_cpu_server_s"] = per_round["server"]
                    out["round_cpu_hosts_s"] = per_round["hosts"]
        session.close()
    finally:
        for p in procs:
            if p.poll() is None:
                p.stdin.close()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    return out


def _worker_failures(server_log: Path) -> dict[str, int]:
    """How the sites' job workers failed, from the server's log: reason -> count."""
    reasons: dict[str, int] = {}
    try:
        text = server_log.read_text(errors="replace")
    except OSError:
        return reasons
    for line in text.splitlines():
        if " worker failed (" in line:
            why = line.split(" worker failed (", 1)[1].rstrip(")")[:120]
            reasons[why] = reasons.get(why, 0) + 1
    return reasons


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="defaults 10 sites, 2 hosts, 5 s idle")
    p.add_argument("--sites", help="comma-separated N (default 100,500,1000)")
    p.add_argument("--hosts", type=int, help="site-host processes (default 8)")
    p.add_argument("--idle", type=float, help="seconds of idle CPU measured (default 20)")
    p.add_argument(
        "--round-max",
        type=int,
        default=100,
        help="with --daemons: largest N a round is run for",
    )
    p.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=120.0,
        help="the server's, seconds; sites beat every third of it. shoal's default is 30 "
        "(a beat every 10 s); 120 keeps the figures comparable with earlier runs, where "
        "starved SiteDaemon hosts missed 30 s heartbeats during a 1000-site job start",
    )
    p.add_argument(
        "--daemons",
        action="store_true",
        help="real SiteDaemons with job worker processes (as in production) "
        "instead of asyncio sites",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.round_max = 10
    args.sites = args.sites or ("10" if args.quick else "100,500,1000")
    args.hosts = args.hosts or (2 if args.quick else 8)
    args.idle = args.idle if args.idle is not None else (5.0 if args.quick else 20.0)
    kind = "SiteDaemons" if args.daemons else "asyncio sites"
    header(f"scale: one server, N connected sites ({kind} in {args.hosts} site-host processes)")
    results = []
    with tempfile.TemporaryDirectory(prefix="shoal-bench-scale-") as tmp:
        for n in [int(x) for x in args.sites.split(",")]:
            emit(f"... {n} sites")
            try:
                res = measure(
                    n,
                    args.hosts,
                    args.idle,
                    args.round_max,
                    Path(tmp),
                    args.daemons,
                    args.heartbeat_timeout,
                )
            except Exception as exc:
                res = {"sites": n, "error": f"{type(exc).__name__}: {exc}"}
            emit(f"    raw: {res}")
            results.append(res)
    emit()
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["sites"], "FAILED", r["error"], "", "", "", "", ""])
            continue
        rnd = r.get("round_s")
        cpu = (
            f"{r['round_cpu_server_s']:.2f} / {r['round_cpu_hosts_s']:.2f} s"
            if "round_cpu_server_s" in r
            else ""
        )
        rows.append(
            [
                r["sites"],
                fmt_s(r["provision_s"]),
                f"{fmt_s(r['register_s'])} ({r['registered']}/{r['sites']})",
                f"{r.get('idle_server_pct', float('nan')):.1f}% / {r.get('idle_hosts_pct', float('nan')):.1f}%",
                f"{r.get('server_rss_mib', 0):.0f} / {r.get('hosts_rss_mib', 0):.0f} MiB",
                f"{fmt_s(statistics.median(rnd[1:]))} ({r['workers']})"
                if rnd
                else "not run (N job-worker processes)"
                if "workers" not in r
                else "failed",
                cpu,
                r.get("note", ""),
            ]
        )
    table(
        rows,
        [
            "sites",
            "provision",
            "registration",
            "idle CPU server / site hosts",
            "RSS server / site hosts",
            "tiny round (rounds 2..3, median)",
            "CPU per round server / site hosts",
            "note",
        ],
    )
    return results


if __name__ == "__main__":
    main()
