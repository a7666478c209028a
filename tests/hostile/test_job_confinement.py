"""Issue 16, finding 1: job code — a site's training script and the server's
hooks — cannot read any key, kit file or other job's folder, does not see the
daemon's environment, and holds only a credential useless beyond its own job.

A real federation from real kits: the job is what a hostile ``lead`` would
submit; it tries every secret the red team took and writes down what it got.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from faults.harness import write_job  # noqa: I001

from shoal import sandbox
from shoal._proto import shoal_pb2 as pb
from shoal._proto import shoal_pb2_grpc as pb_grpc
from shoal.transport import PayloadHeader, TLSConfig

from .conftest import raw_channel

pytestmark = pytest.mark.slow

PROBE = """
import json, os, sys
from pathlib import Path

def probe(tag, targets):
    got = {}
    for path in targets:
        try:
            data = Path(path).read_bytes() if Path(path).is_file() else os.listdir(path)
            got[path] = "READ %d" % len(data)
        except OSError as exc:
            got[path] = type(exc).__name__
    leaked = sorted(k for k in os.environ if k in ("THE_DAEMONS_SECRET", "AWS_SECRET_ACCESS_KEY"))
    print("PROBE", tag, json.dumps({"got": got, "env": leaked, "uid": os.getuid()}), flush=True)
"""

TRAIN = """
import json
import sys
from probe import probe
import shoal.client as fl

probe("site", json.loads(open("targets.json").read())["site"])
fl.init()
while fl.is_running():
    task = fl.receive()
    fl.send(fl.FLModel(params=task.params, num_examples=1))
"""

MODEL = """
import json
from pathlib import Path
import numpy as np
from probe import probe

def initial_weights():
    probe("server", json.loads((Path(__file__).parent / "targets.json").read_text())["server"])
    return {"w": np.zeros(4, np.float32)}
"""


def _probe_lines(text: str, tag: str) -> dict:
    for line in text.splitlines():
        if line.startswith(f"PROBE {tag} "):
            return json.loads(line.split(" ", 2)[2])
    raise AssertionError(f"no probe line for {tag} in:\n{text[-3000:]}")


def _hostile_job(folder: Path, targets: dict[str, list[str]]) -> Path:
    app = folder / "app"
    app.mkdir(parents=True)
    (app / "probe.py").write_text(PROBE)
    (app / "train.py").write_text(TRAIN)
    (app / "model.py").write_text(MODEL)
    (app / "targets.json").write_text(json.dumps(targets))
    (folder / "job.yml").write_text(
        "name: steal-keys\nmin_clients: 2\nworkflow:\n  name: fedavg\n  num_rounds: 1\n"
        "client:\n  script: train.py\nserver:\n  initial_weights: model:initial_weights\n"
    )
    return folder


def test_job_code_reads_no_key_kit_file_or_other_job(fed_factory, tmp_path: Path):
    fed = fed_factory()
    # What a daemon's environment may hold and job code must not see.
    fed.env["THE_DAEMONS_SECRET"] = "hunter2"
    admin = fed.start_all()
    site1, site2, server = fed.kits["site-1"], fed.kits["site-2"], fed.kits["server1"]

    # An earlier job whose folder the hostile one goes after.
    first = admin.submit_job(write_job(tmp_path / "first", name="first", num_rounds=1))
    assert admin.wait_for_job(first, timeout=120)["status"] == "FINISHED:COMPLETED"

    site_targets = [
        str(site1 / "startup" / "client.key"),
        str(site1 / "startup" / "fed_client.json"),
        str(site1 / "startup"),
        str(site1 / "local"),
        str(site1 / "log.txt"),
        str(site1 / "jobs" / first / "job.zip"),
        str(site1 / "jobs" / first / "credentials" / "worker.key"),
        str(site2 / "startup" / "client.key"),
        str(server / "startup" / "server.key"),
        str(fed.state_dir / "rootCA.key"),
    ]
    server_targets = [
        str(server / "startup" / "server.key"),
        str(server / "startup" / "fed_server.json"),
        str(server / "jobca" / "job_ca.key"),
        str(server / "jobs" / first / "job.zip"),
        str(server / "jobs" / first / "logs"),
        str(site1 / "startup" / "client.key"),
        str(fed.state_dir / "rootCA.key"),
    ]
    job = _hostile_job(tmp_path / "hostile", {"site": site_targets, "server": server_targets})
    job_id = admin.submit_job(job)
    assert admin.wait_for_job(job_id, timeout=180)["status"] == "FINISHED:COMPLETED"

    site_log = (site1 / "jobs" / job_id / "log.txt").read_text()
    assert "job code confined" in site_log
    seen = _probe_lines(site_log, "site")
    assert seen["env"] == [], seen
    for path, outcome in seen["got"].items():
        assert not outcome.startswith("READ"), f"site job code read {path}"

    # The server's hooks ran in the workflow process, confined the same way.
    server_log = (server / "jobs" / job_id / "logs" / "server.log").read_text()
    seen = _probe_lines(server_log, "server")
    assert seen["env"] == [], seen
    for path, outcome in seen["got"].items():
        assert not outcome.startswith("READ"), f"server hook read {path}"

    # The worker's configuration names a credential of its own, not the site's key.
    config = json.loads((site1 / "jobs" / job_id / "worker.json").read_text())
    assert Path(config["key_path"]).parent == site1 / "jobs" / job_id / "credentials"
    assert "client.key" not in json.dumps(config)


def test_a_stolen_worker_credential_is_useless_beyond_its_job(fed_factory, tmp_path: Path):
    fed = fed_factory()
    admin = fed.start_all()
    site1 = fed.kits["site-1"]
    job_id = admin.submit_job(write_job(tmp_path / "job", name="j", num_rounds=1))
    assert admin.wait_for_job(job_id, timeout=120)["status"] == "FINISHED:COMPLETED"
    creds = site1 / "jobs" / job_id / "credentials"
    stolen = TLSConfig(
        ca_pem=(creds / "ca.pem").read_bytes(),
        cert_pem=(creds / "worker.crt").read_bytes(),
        key_pem=(creds / "worker.key").read_bytes(),
    )
    channel = raw_channel(stolen, fed.fed_port)
    fleet = pb_grpc.FleetStub(channel)

    def refused(call, *codes: grpc.StatusCode) -> str:  # type: ignore[no-untyped-def]
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() in codes, (info.value.code(), info.value.details())
        return str(info.value.details())

    denied = (grpc.StatusCode.PERMISSION_DENIED,)
    # Not the site: no session, no heartbeat, no job package, no log upload.
    details = refused(lambda: next(iter(fleet.Connect(pb.Hello(site="site-1")))), *denied)
    assert "worker" in details
    refused(lambda: fleet.Beat(pb.Heartbeat(session_id="x"), timeout=10), *denied)
    refused(lambda: next(iter(fleet.FetchJob(pb.FetchJobRequest(job_id=job_id)))), *denied)

    # Another job's Work stream is refused; its own job is over, so that is too.
    def work(for_job: str) -> None:
        ready = PayloadHeader(kind="ready", job_id=for_job, size=0, meta={"wait_s": 1})
        next(iter(fleet.Work(iter([pb.Frame(header=ready.to_pb())]), timeout=10)))

    details = refused(lambda: work("another-job"), *denied)
    assert "cannot act for job another-job" in details
    refused(lambda: work(job_id), grpc.StatusCode.NOT_FOUND, *denied)

    # Nor does it open the admin port: that trusts the project CA only.
    admin_stub = pb_grpc.AdminStub(raw_channel(stolen, fed.admin_port))
    with pytest.raises(grpc.RpcError) as info:
        admin_stub.Call(pb.AdminRequest(command="check_status"), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()


def _uid_mode_unavailable(workspace: Path) -> str | None:
    user, why = sandbox.job_user((), workspace=workspace)
    return None if user is not None else why


def test_a_root_site_runs_each_job_as_a_uid_of_its_own(fed_factory, tmp_path_factory):
    """Where a root daemon can switch users (the interpreter readable by
    others, the workspace passable), each job runs as its own uid, on top of
    Landlock. Needs such a host: this project's CI runs a Python under /root
    (0700), where the daemon falls back to Landlock alone and says why."""
    why = _uid_mode_unavailable(Path("/tmp"))
    if why is not None:
        pytest.skip(f"no uid per job on this host: {why}")
    base = Path("/tmp") / f"shoal-uid-{tmp_path_factory.getbasetemp().name}"
    base.mkdir(mode=0o755, exist_ok=True)
    base.chmod(0o755)
    ws = base / "ws-site-1"
    ws.mkdir(mode=0o755, exist_ok=True)
    fed = fed_factory()
    # The harness's gate lives in pytest's private folders: no uid but root's
    # could write there, and this test holds no job.
    for name in ("FAULT_GATE", "SHOAL_JOB_ENV", "SHOAL_WRITE_PATHS"):
        fed.env.pop(name)
    fed.start_server()
    fed.start_site("site-1", workspace=ws)
    admin = fed.admin()
    fed.wait_connected(admin, ["site-1"])
    first = admin.submit_job(write_job(tmp_path_factory.mktemp("j1"), name="a", num_rounds=1))
    second = admin.submit_job(write_job(tmp_path_factory.mktemp("j2"), name="b", num_rounds=1))
    for job_id in (first, second):
        assert admin.wait_for_job(job_id, timeout=120)["status"] == "FINISHED:COMPLETED"
    owners = {(ws / "jobs" / j / "job").stat().st_uid for j in (first, second)}
    assert len(owners) == 2 and min(owners) >= 0x30000, owners
    assert (ws / "jobs" / first / "log.txt").stat().st_uid == 0
    assert oct((ws / "jobs").stat().st_mode & 0o777) == "0o711"
