"""Certificates over a running project's life, through real daemons (POC: mutual
TLS on 127.0.0.1, real kits):

- a site added to project.yml gets the only new kit (the CA and every other kit
  byte-identical), connects to the running server (same pid, no restart) and
  runs a job that names it;
- one site's certificate renewed (10 days, so it is also warned about): the
  renewed kit connects, the old kits of the others keep working, check_status
  shows the warning;
- the server's certificate renewed the same way: the sites reconnect with
  their old kits, and the server warns in its log, check_status and health.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from shoal import jobstatus, poc
from shoal.deploy.healthcheck import check
from shoal.provision.lifecycle import add_participants, renew
from shoal.transport.health import CERTIFICATES_SERVICE

from .conftest import Federation
from .test_jobs import numpy_job, wait_for

pytestmark = [
    pytest.mark.filterwarnings(r"ignore:subprocess \d+ is still running:ResourceWarning"),
]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _connected(fed: Federation) -> set[str]:
    try:
        with poc.admin_session(fed.workspace, timeout=5) as s:
            return {x.name for x in s.check_status().sites if x.connected}
    except Exception:  # the server is restarting
        return set()


def _stop(pid: int) -> None:
    os.killpg(pid, signal.SIGTERM)
    wait_for(lambda: not poc._alive(pid), f"process {pid} to exit", 30)


def test_add_a_site_then_renew_a_site_and_the_server_while_running(
    federation_factory: Callable[..., Federation],
    spawn: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    fed = federation_factory(2)
    layout = fed.layout
    project_file = layout.workspace / "project.yml"
    kits_ws = layout.workspace / "kits"
    project_dir = kits_ws / poc.PROJECT
    server_pid = fed.pid("server1")

    # -- add site-3 --------------------------------------------------------------
    before = _files(project_dir)
    text = project_file.read_text().replace(
        "  - name: admin@nvidia.com",
        "  - name: site-3\n    type: client\n    org: org3\n  - name: admin@nvidia.com",
    )
    project_file.write_text(text)
    added = add_participants(project_file, kits_ws, ["site-3"]).kits["site-3"]
    after = _files(project_dir)
    assert {k for k in before if before[k] != after.get(k)} == {
        "state/issued.json",
        "state/project.yml",
    }
    spawn("client", "--kit", str(added), "--server", layout.fed_address)
    wait_for(lambda: "site-3" in _connected(fed), "site-3 to connect", 60)
    assert fed.pid("server1") == server_pid  # never restarted
    s = fed.admin()
    job = numpy_job(tmp_path, name="on-site-3", rounds=1, min_clients=1)
    (job / "job.yml").write_text((job / "job.yml").read_text() + "sites: [site-3]\n")
    job_id = s.submit_job(job)
    meta = s.wait_for_job(job_id, timeout=120)
    assert meta.status == jobstatus.COMPLETED and list(meta.sites) == ["site-3"]

    # -- renew site-1 (a 10-day certificate) ---------------------------------------
    renewed = renew(project_file, kits_ws, ["site-1"], validity_days=10).kits["site-1"]
    _stop(fed.pid("site-1"))
    site_1 = spawn("client", "--kit", str(renewed), "--server", layout.fed_address)
    wait_for(lambda: _connected(fed) == {"site-1", "site-2", "site-3"}, "renewed site-1", 60)
    status = s.check_status()  # the admin's old kit still logs in and works
    [one] = [x for x in status.sites if x.name == "site-1"]
    assert (
        one.certificate_warnings
        and "certificate of site-1 expires in 9 days" in (one.certificate_warnings[0])
    )
    assert not [x for x in status.sites if x.name == "site-2"][0].certificate_warnings
    assert "WARNING: certificate of site-1 expires in 9 days" in (
        subprocess.run(
            [sys.executable, "-m", "shoal", "admin", "--kit", str(layout.admin_kit)]
            + ["--server", layout.admin_address, "check_status"],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    )
    site_log = renewed / "log.txt"
    assert "certificate of site-1 expires in 9 days" in site_log.read_text()
    assert site_1.poll() is None

    # -- renew server1 (10 days) and restart it on its own workspace ----------------
    new_server = renew(project_file, kits_ws, ["server1"], validity_days=10).kits["server1"]
    _stop(server_pid)
    ready = layout.server_kit / "server_ready.json"
    ready.unlink(missing_ok=True)
    spawn(
        "server", "--kit", str(new_server), "--host", "127.0.0.1",
        "--workspace", str(layout.server_kit),
    )  # fmt: skip
    wait_for(ready.exists, "the renewed server to listen", 60)
    wait_for(lambda: _connected(fed) == {"site-1", "site-2", "site-3"}, "the sites to return", 60)
    status = s.check_status()
    assert "certificate of server1 expires in 9 days" in status.server.certificate_warnings[0]
    assert "certificate of server1 expires in 9 days" in (layout.server_kit / "log.txt").read_text()
    health_port = json.loads(ready.read_text())["ports"]["health"]
    assert check(health_port)  # alive and serving: a warning is no reason to restart it
    assert not check(health_port, service=CERTIFICATES_SERVICE)
    assert s.get_job_meta(job_id).status == jobstatus.COMPLETED  # jobs kept across the swap
