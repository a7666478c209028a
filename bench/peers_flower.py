"""Drive a real Flower deployment (one SuperLink, two SuperNodes, TLS) with
shoal's bench workloads: the tiny round and the 100 MiB round.

Runs with this repository's Python; Flower runs from its own venv
(``bash bench/peers/setup.sh flwr``). Everything lives in a temp dir: a
throwaway CA and a server certificate for 127.0.0.1/localhost (a one-site shoal
POC project's), ``flower-superlink`` with ``--ssl-*`` on a free loopback port,
two ``flower-supernode``s with ``--root-certificates``, and ``flwr run`` with
the CA as the connection's ``root-certificates``. The app is ``bench/peers/flwr/app`` (written by hand:
``flwr new`` needs the Flower hub): Flower's own FedAvg (2 nodes, fraction 1.0,
no federated evaluate) over a random float32 model, ClientApps that echo the
arrays back.

Not mutual TLS: Flower 1.42 cannot do it. Its Fleet API is HTTPS served by
uvicorn with the server's certificate and key only (``flower_superlink.py``
passes no ``ssl_ca_certs`` / ``ssl_cert_reqs``), and the SuperNode has no
client certificate option (its help: ``--root-certificates`` "is not a client
certificate for mTLS"; ``--ssl-*`` on the SuperNode are for its local Runtime
API). What Flower offers to authenticate sites is SuperNode authentication:
each request signed with the node's registered EC key. ``--supernode-auth``
turns it on (off by default, as in Flower): the SuperLink with
``--enable-supernode-auth``, each SuperNode with its own ECDSA key
(``--auth-supernode-private-key``), registered first with ``flwr supernode
register``. shoal and NVIDIA FLARE authenticate sites with client
certificates in the TLS handshake, on by default.

Tuning: ``--superexec-poll S`` sets ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` (how
often each SuperExec asks for a ClientApp/ServerApp to launch; default 1 s,
0.01 s at least), the one poll of the round path Flower reads from
configuration. The others are constants: the SuperNode sleeps 3 s whenever a
pull finds no message (``supernode/start_client_internal.py``) and waits for a
reply in 0.5 s steps, the ServerApp's grid pulls replies every 0.25 s.

Round times come from the ServerApp's strategy itself: Flower's ``FedAvg.start``
calls the app's ``evaluate_fn`` before round 1 and after each round's
aggregation; it appends ``time.time()`` to a file named in the run config, and
a round is the gap between two of those stamps (median over rounds 2..N;
round 1 apart, it also starts the apps). submit -> finished is the wall time of
``flwr run --stream``, which returns when the SuperLink reports the run
finished. Peak RSS is VmHWM sampled every 50 ms over each Flower process and
all its descendants (SuperExec, ServerApp / ClientApp processes): per process
kind the largest peak, summed over the kinds of one tree.

Both sites echo the same arrays, and Flower stores objects by content hash, so
a SuperNode skips uploading a chunk the SuperLink already holds; the Fleet API
byte counts printed (Flower's own) show how much actually moved each way.

    python bench/peers_flower.py [--size 4x4|100M|1G] [--rounds 10]
        [--superexec-poll 0.01] [--supernode-auth]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    ROOT,
    MiB,
    PeakSampler,
    descendants,
    emit,
    fmt_s,
    header,
    mib,
    proc_status,
)

VENV = ROOT / "bench" / "peers" / "flwr" / "venv" / "bin"
APP = ROOT / "bench" / "peers" / "flwr" / "app"
SITES = ("site-1", "site-2")


# -- workload ---------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    """``4x4`` -> one float32 array of 4*4 values; ``100M`` / ``1G`` / ``512K``
    -> that many MiB/GiB/KiB of float32 in 8 arrays. Returns (bytes, arrays)."""
    m = re.fullmatch(r"(\d+)x(\d+)", text)
    if m:
        return int(m.group(1)) * int(m.group(2)) * 4, 1
    m = re.fullmatch(r"(\d+)([KMG])", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected RxC (e.g. 4x4) or 100M / 1G")
    return int(m.group(1)) * 1024 ** "KMG".index(m.group(2)) * 1024, 8


# -- TLS material -----------------------------------------------------------------


def write_certs(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost: those of a
    throwaway shoal POC project (``shoal.poc.prepare``), which the SuperLink
    serves with and the SuperNodes and ``flwr`` trust."""
    from shoal import poc

    layout = poc.prepare(folder / "poc", num_sites=1)
    startup = Path(layout.server_kit) / "startup"
    return {
        "ca": startup / "rootCA.pem",
        "cert": startup / "server.crt",
        "key": startup / "server.key",
    }


# -- processes --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kind(pid: int) -> str:
    """The Flower command a process runs (flwr-serverapp, flower-superexec, ...)."""
    with contextlib.suppress(OSError):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        args = [a.decode(errors="replace") for a in argv if a]
        if args and os.path.basename(args[0]).startswith("python") and len(args) > 1:
            args = args[1:]
        if args:
            return os.path.basename(args[0])
    return "?"


class TreePeaks(PeakSampler):
    """VmHWM of some root processes and all their descendants, every ``interval`` s.

    Child processes of a Flower daemon come and go (a ClientApp process per run,
    a ServerApp process per run), so descendants are grouped by the command they
    run and each group keeps its largest peak (``_common.PeakSampler`` looks at
    direct children only; the ServerApp is two levels down).
    """

    def __init__(self, roots: dict[str, int], interval: float = 0.05) -> None:
        super().__init__(roots, interval)
        self.tree: dict[str, dict[str, int]] = {name: {} for name in roots}
        self._kinds: dict[int, str] = {}

    def _sample(self) -> None:
        for name, root in self.roots.items():
            for pid in [root, *descendants(root)]:
                hwm = proc_status(pid).get("VmHWM", 0)
                if not hwm:
                    continue
                k = "self" if pid == root else self._kinds.setdefault(pid, kind(pid))
                if k.startswith(("self", "flwr", "flower")):  # not helpers such as uname
                    self.tree[name][k] = max(self.tree[name].get(k, 0), hwm)

    def total(self, name: str) -> int:
        return sum(self.tree[name].values())


def stop_tree(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM a process and everything it started, then SIGKILL what is left."""
    pids = [proc.pid, *descendants(proc.pid)]
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    for pid in pids:
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


@dataclass(frozen=True)
class Setup:
    """How the deployment differs from Flower's defaults."""

    supernode_auth: bool = False
    """SuperLink ``--enable-supernode-auth``, each SuperNode with a registered key."""
    superexec_poll: float | None = None
    """``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``, seconds (None: Flower's 1 s)."""

    def label(self) -> str:
        changed = []
        if self.superexec_poll is not None:
            changed.append(f"FLWR_SUPEREXEC_TASK_POLL_INTERVAL {self.superexec_poll:g} s")
        if self.supernode_auth:
            changed.append("SuperNode authentication")
        return ", ".join(changed) or "defaults"

    def security(self) -> str:
        auth = "SuperNode authentication" if self.supernode_auth else "no SuperNode authentication"
        return f"server-only TLS + {auth}"


def write_node_key(folder: Path, name: str) -> tuple[Path, Path]:
    """An ECDSA P-384 key pair in OpenSSH format, as Flower's docs make with
    ``ssh-keygen -t ecdsa -b 384``: (private key, public key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / name, folder / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return private, public


class Deployment:
    """A SuperLink and two SuperNodes on loopback with TLS, in ``tmp``."""

    def __init__(self, tmp: Path, setup: Setup = Setup()) -> None:
        self.tmp = tmp
        self.setup = setup
        self.certs = write_certs(tmp / "certs")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def env(self, name: str) -> dict[str, str]:
        home = self.tmp / "home" / name
        home.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            # The daemons start flower-superexec / flwr-serverapp / flwr-clientapp by name.
            "PATH": f"{VENV}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PYTHONUNBUFFERED": "1",
        }
        if self.setup.superexec_poll is not None:
            # Read by every SuperExec the daemons start (ServerApp and ClientApps).
            env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(self.setup.superexec_poll)
        else:
            env.pop("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", None)
        return env

    def spawn(self, name: str, *args: str) -> None:
        log = self.tmp / f"{name}.log"
        self.logs[name] = log
        with log.open("wb") as out:
            self.procs[name] = subprocess.Popen(
                [str(VENV / args[0]), *args[1:]],
                cwd=self.tmp,
                env=self.env(name),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")

    def start(self, timeout: float = 120.0) -> float:
        """Start all three and wait until both SuperNodes have an ID; seconds taken."""
        t0 = time.monotonic()
        self.spawn(
            "superlink",
            "flower-superlink",
            "--ssl-ca-certfile",
            str(self.certs["ca"]),
            "--ssl-certfile",
            str(self.certs["cert"]),
            "--ssl-keyfile",
            str(self.certs["key"]),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            # Offline here: run the app with the venv's packages, no `uv sync`.
            "--disable-runtime-dependency-installation",
            *(["--enable-supernode-auth"] if self.setup.supernode_auth else []),
        )
        self.wait_healthy(t0 + timeout)
        for site in SITES:
            auth: list[str] = []
            if self.setup.supernode_auth:
                private, public = write_node_key(self.tmp / "keys", site)
                r = self.flwr("supernode", "register", str(public), timeout=60)
                if r.returncode != 0:
                    raise RuntimeError(f"flwr supernode register {site}: {r.stdout}{r.stderr}")
                auth = ["--auth-supernode-private-key", str(private)]
            self.spawn(
                site,
                "flower-supernode",
                "--superlink",
                self.address,
                "--root-certificates",
                str(self.certs["ca"]),
                # Each SuperNode's own Runtime API for its ClientApp processes.
                "--port",
                str(free_port()),
                *auth,
            )
        for site in SITES:
            while "SuperNode ID:" not in self.log(site):
                self.check_alive(t0 + timeout)
                time.sleep(0.1)
        return time.monotonic() - t0

    def wait_healthy(self, deadline: float) -> None:
        ctx = ssl.create_default_context(cafile=str(self.certs["ca"]))
        while True:
            self.check_alive(deadline)
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=2)
                try:
                    conn.request("GET", "/health")
                    if conn.getresponse().status == 200:
                        return
                finally:
                    conn.close()
            time.sleep(0.1)

    def check_alive(self, deadline: float) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited {p.returncode}: {self.log(name)[-1500:]}")
        if time.monotonic() > deadline:
            raise TimeoutError("Flower deployment not ready: " + self.log("superlink")[-1500:])

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            stop_tree(self.procs[name])

    def flwr(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run the ``flwr`` CLI against this SuperLink."""
        env = self.env("cli")
        (Path(env["FLWR_HOME"]) / "config.toml").write_text(
            "[superlink]\n"
            'default = "bench"\n\n'
            "[superlink.bench]\n"
            f'address = "{self.address}"\n'
            f'root-certificates = "{self.certs["ca"]}"\n'
        )
        return subprocess.run(
            [str(VENV / "flwr"), *args],
            cwd=self.tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@contextlib.contextmanager
def deployment(setup: Setup = Setup()) -> Iterator[Deployment]:
    with tempfile.TemporaryDirectory(prefix="shoal-bench-flower-") as d:
        dep = Deployment(Path(d), setup)
        # SIGTERM (e.g. from a parent bench runner) unwinds like Ctrl-C, so the
        # finally below still stops the daemons.
        main = threading.current_thread() is threading.main_thread()
        old = signal.signal(signal.SIGTERM, signal.default_int_handler) if main else None
        try:
            yield dep
        finally:
            try:
                dep.stop()
            finally:
                if main:
                    signal.signal(signal.SIGTERM, old)


# -- the measurement ----------------------------------------------------------------


def measure(
    size: str, rounds: int, timeout: float = 1800.0, *, setup: Setup = Setup()
) -> dict[str, Any]:
    model_bytes, num_arrays = parse_size(size)
    with deployment(setup) as dep:
        started_s = dep.start()
        app = dep.tmp / "app"
        # A copy: `flwr run` may migrate a project's pyproject.toml in place.
        shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__"))
        timing = dep.tmp / "rounds.txt"
        run_config = (
            f"num-server-rounds={rounds} model-bytes={model_bytes} "
            f'num-arrays={num_arrays} timing-file="{timing}"'
        )
        roots = {name: p.pid for name, p in dep.procs.items()}
        with TreePeaks(roots) as peaks:
            t0 = time.monotonic()
            r = dep.flwr("run", str(app), "--stream", "--run-config", run_config, timeout=timeout)
            finished_s = time.monotonic() - t0
        (dep.tmp / "flwr-run.log").write_text(r.stdout + r.stderr)
        run_id = re.search(r"Successfully started run (\d+)", r.stdout)
        if r.returncode != 0 or not run_id:
            raise RuntimeError(f"flwr run failed ({r.returncode}): {r.stdout[-1500:]}{r.stderr}")
        ls = dep.flwr("ls", "--run-id", run_id.group(1), "--format", "json", timeout=120)
        run_info: dict[str, Any] = next(iter(json.loads(ls.stdout).get("runs", [])), {})
        stamps: dict[int, float] = {}
        with contextlib.suppress(OSError):
            for line in timing.read_text().splitlines():
                rnd, t = line.split()
                stamps[int(rnd)] = float(t)
        ok = r.stdout.count(f"Received {len(SITES)} results and 0 failures")
        if ok != rounds or run_info.get("status") != "finished:completed":
            raise RuntimeError(
                f"run {run_id.group(1)}: {run_info.get('status')}, {ok} of {rounds} rounds "
                f"with every reply: {r.stdout[-1500:]}"
            )
        if stamps.keys() != set(range(rounds + 1)):
            raise RuntimeError(
                f"run {run_id.group(1)} recorded rounds {sorted(stamps)}, wanted 0..{rounds}: "
                f"{r.stdout[-1500:]}"
            )
    durations = [stamps[i] - stamps[i - 1] for i in range(1, rounds + 1)]
    steady = durations[1:] if len(durations) > 1 else durations
    return {
        "size": size,
        "config": setup.label(),
        "security": setup.security(),
        "model_bytes": model_bytes,
        "num_arrays": num_arrays,
        "round_median_s": statistics.median(steady),
        "rounds_seen": len(durations),
        "round_durations_s": [round(d, 3) for d in durations],
        "submit_to_finished_s": finished_s,
        "deployment_start_s": started_s,
        "peak_rss": {name: peaks.total(name) for name in roots},
        "peak_rss_by_process": {name: dict(peaks.tree[name]) for name in roots},
        "run_status": run_info.get("status"),
        # Flower's own count of Fleet API bytes (SuperNodes' pushes in, pulls out).
        "bytes_in": run_info.get("network-traffic", {}).get("inbound-bytes"),
        "bytes_out": run_info.get("network-traffic", {}).get("outbound-bytes"),
    }


def flower_version() -> str:
    r = subprocess.run(
        [str(VENV / "python"), "-c", "import flwr; print(flwr.__version__)"],
        capture_output=True,
        text=True,
    )
    return r.stdout.strip() or "?"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="4x4", help="4x4 (tiny, 64 bytes) or 100M, 1G, ...")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument(
        "--superexec-poll",
        type=float,
        default=None,
        help="FLWR_SUPEREXEC_TASK_POLL_INTERVAL in seconds (default: Flower's, 1 s; least 0.01)",
    )
    p.add_argument(
        "--supernode-auth",
        action="store_true",
        help="turn SuperNode authentication on (off by default, as in Flower)",
    )
    args = p.parse_args(argv)
    model_bytes, _ = parse_size(args.size)
    setup = Setup(supernode_auth=args.supernode_auth, superexec_poll=args.superexec_poll)
    header(
        f"Flower SuperLink + 2 SuperNodes ({setup.label()}; {setup.security()}): "
        f"FedAvg, echo clients, {args.size} model"
    )
    if not (VENV / "flower-superlink").exists():
        emit(f"Flower not installed in {VENV}; run: bash bench/peers/setup.sh flwr")
        return {}
    emit(f"flwr {flower_version()} ({VENV.parent})")
    emit(
        "TLS: server-only. Flower 1.42's SuperNode has no client certificate, so no mutual "
        "TLS; Flower authenticates sites by SuperNode authentication"
        + (" (on in this run)" if setup.supernode_auth else " (off in this run, as by default)")
    )
    res = measure(args.size, args.rounds, setup=setup)
    emit(f"    raw: {res}")
    emit(
        f"Flower ({setup.label()}) {args.size} round ({model_bytes} bytes; rounds 2..N, median): "
        f"{fmt_s(res['round_median_s'])}"
    )
    durs = res["round_durations_s"]
    emit(
        f"    rounds 2..N min / max: {fmt_s(min(durs[1:] or durs))} / {fmt_s(max(durs[1:] or durs))}"
    )
    emit(
        f"Flower submit -> finished ({args.rounds} rounds, `flwr run --stream` wall time): "
        f"{fmt_s(res['submit_to_finished_s'])}; run {res['run_status']}"
    )
    # Flower stores objects by content hash: a SuperNode does not upload a chunk the
    # SuperLink already holds, and both sites echo the same model.
    want = len(SITES) * args.rounds * model_bytes
    emit(
        f"Fleet API bytes (Flower's count): SuperNodes pulled {res['bytes_out']}, pushed "
        f"{res['bytes_in']} (model bytes x sites x rounds = {want} each way)"
    )
    for name, total in res["peak_rss"].items():
        parts = ", ".join(f"{k} {mib(v)}" for k, v in res["peak_rss_by_process"][name].items())
        ratio = f"{total / model_bytes:.1f}x the model; " if model_bytes >= MiB else ""
        emit(f"Flower peak RSS {name}: {mib(total)} ({ratio}{parts})")
    return res


if __name__ == "__main__":
    main()
