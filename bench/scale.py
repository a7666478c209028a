"""Scale: one server with 100, 500 and 1000 connected sites on loopback (workload 4):
registration time, idle CPU of heartbeats, time of one round with a tiny model;
where it breaks and why.

    python bench/scale.py [--quick] [--sites 100,500,1000] [--hosts 4] [--round-max 100]

Every site has its own provisioned kit (``shoal.poc.prepare(num_sites=N)``:
identity is the certificate's CN). The server is a real daemon process; the
sites are real ``SiteDaemon`` objects, many per process over ``--hosts``
processes (``bench/_site_host.py``), each with its own mTLS channel, Connect
stream and heartbeats.

* registration: hosts started -> the server lists all N sites connected;
* idle CPU: CPU seconds used by the server and by all site hosts over
  ``--idle`` seconds of heartbeats only, as % of one core;
* round: a 3-round tiny job with min_clients = N; rounds 2..3 (round 1 also
  waits for N job workers to start). A production site starts one job worker
  *process* per job (user code never runs in a daemon): N Python processes,
  which do not fit on one machine for N in the hundreds. So by default the
  site hosts are ``--light``: each site's worker is a thread of its host that
  echoes the model through the real ``GrpcBackend`` (own mTLS channel, real
  GetTask/PutResult), and the figure is the server's cost of a round with N
  sites. ``--processes`` uses real worker processes instead (only for N <=
  ``--round-max``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Fed, emit, fmt_s, header, run_job, table, write_job  # noqa: E402

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def connected(session) -> int:  # type: ignore[no-untyped-def]
    return sum(1 for s in session.check_status()["sites"] if s["connected"])


def measure(
    n: int, hosts: int, idle_s: float, round_max: int, tmp: Path, light: bool, hb_timeout: float
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
    try:
        ready = layout.server_kit / "server_ready.json"
        while not ready.exists():
            if server.poll() is not None:
                raise RuntimeError("server exited at start-up")
            time.sleep(0.05)
        session = poc.admin_session(ws, timeout=60)
        kits = [str(k) for k in layout.site_kits.values()]
        groups = [kits[i::hosts] for i in range(hosts)]
        t0 = time.monotonic()
        for g in groups:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(HERE / "_site_host.py"),
                        *(["--light"] if light else []),
                        layout.fed_address,
                        *g,
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
        deadline = t0 + 300
        up = 0
        while time.monotonic() < deadline:
            up = connected(session)
            if up >= n:
                break
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(
                    "a site host exited: "
                    + (
                        procs[0].stderr.read(2000).decode(errors="replace")
                        if procs[0].poll() is not None
                        else ""
                    )
                )
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
        if light or n <= round_max:
            job = write_job(
                tmp,
                name=f"tiny-job-{n}",
                num_rounds=3,
                model_bytes=64,
                min_clients=n,
                log=False,
                round_timeout_s=180,
            )
            fed = Fed(ws, layout, session)
            out["workers"] = "light: coroutines" if light else "processes"
            try:
                # Poll gently: at 1000 sites the admin calls compete with the round.
                r = run_job(fed, job, timeout=1800, poll_s=0.2)
            except (RuntimeError, TimeoutError) as exc:
                out["note"] = f"round failed: {exc}"[:300]
                out["worker_failures"] = _worker_failures(layout.server_kit / "log.txt")
            else:
                out["round_s"] = [float(x["duration_s"]) for x in r.rounds]
                out["job_s"] = r.submit_to_finished_s
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
    p.add_argument("--quick", action="store_true", help="10 sites, 2 hosts, 5 s idle")
    p.add_argument("--sites", default="100,500,1000")
    p.add_argument("--hosts", type=int, default=8)
    p.add_argument("--idle", type=float, default=20.0)
    p.add_argument(
        "--round-max",
        type=int,
        default=100,
        help="with --processes: largest N a round is run for",
    )
    p.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=120.0,
        help="the server's, seconds (shoal's default is 30): here the server and all N "
        "sites share one machine's cores, and a site host's heartbeat thread can starve",
    )
    p.add_argument(
        "--processes",
        action="store_true",
        help="job workers as processes (as in production) instead of threads of the site hosts",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.sites, args.hosts, args.idle, args.round_max = "10", 2, 5.0, 10
    header(f"scale: one server, N connected sites ({args.hosts} site-host processes)")
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
                    not args.processes,
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
            rows.append([r["sites"], "FAILED", r["error"], "", "", "", ""])
            continue
        rnd = r.get("round_s")
        rows.append(
            [
                r["sites"],
                fmt_s(r["provision_s"]),
                f"{fmt_s(r['register_s'])} ({r['registered']}/{r['sites']})",
                f"{r.get('idle_server_pct', float('nan')):.1f}% / {r.get('idle_hosts_pct', float('nan')):.1f}%",
                f"{r.get('server_rss_mib', 0):.0f} / {r.get('hosts_rss_mib', 0):.0f} MiB",
                f"{fmt_s(statistics.median(rnd[1:]))} ({r['workers']})"
                if rnd
                else "not run (N job-worker processes)",
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
            "note",
        ],
    )
    return results


if __name__ == "__main__":
    main()
