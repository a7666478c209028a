"""Issue 3: an admin's role comes from its certificate, and the server enforces it.

A real server daemon from a real kit (mutual TLS on 127.0.0.1, free ports),
with admins of every role provisioned in the project. No sites are started:
submitted jobs stay SUBMITTED, which is all these checks need.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shoal.admin.session import AdminSession
from shoal.errors import NotAuthorizedError
from shoal.poc import free_ports
from shoal.provision import provision

HELLO_NUMPY = Path(__file__).resolve().parents[2] / "examples" / "hello-numpy"
ADMINS = {
    "admin@nvidia.com": "project_admin",
    "lead@nvidia.com": "lead",
    "member@nvidia.com": "member",
}


@dataclass
class Server:
    kits: dict[str, Path]
    admin_address: str

    @property
    def log(self) -> Path:
        return self.kits["server1"] / "log.txt"

    def session(self, name: str) -> AdminSession:
        return AdminSession.from_kit(self.kits[name], server_address=self.admin_address, timeout=60)

    def stored(self) -> list[str]:
        """Everything in the job store's folder (jobs and staging folders)."""
        jobs = self.kits["server1"] / "jobs"
        return sorted(p.name for p in jobs.iterdir()) if jobs.is_dir() else []


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("roles")
    fed, adm, health = free_ports(3)
    lines = [
        "api_version: 3",
        "name: roles_project",
        "participants:",
        "  - {name: server1, type: server, org: nvidia,",
        f"     fed_learn_port: {fed}, admin_port: {adm}, health_port: {health}}}",
        "  - {name: site-1, type: client, org: nvidia}",
        *(f"  - {{name: {n}, type: admin, org: nvidia, role: {r}}}" for n, r in ADMINS.items()),
    ]
    (root / "project.yml").write_text("\n".join(lines) + "\n")
    kits = provision(root / "project.yml", root / "ws").kits
    with open(root / "server.out", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shoal", "server", "--kit", str(kits["server1"])]
            + ["--host", "127.0.0.1"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        ready = kits["server1"] / "server_ready.json"
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, (root / "server.out").read_text()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        yield Server(kits=dict(kits), admin_address=f"127.0.0.1:{adm}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_roles_come_from_the_certificates(server: Server) -> None:
    for name, role in ADMINS.items():
        with server.session(name) as s:
            assert s.role == role
            assert s.check_status()["server"]["name"] == "server1"  # everyone may read status
            s.list_jobs()


def test_member_may_not_submit_and_nothing_is_stored(server: Server) -> None:
    before = server.stored()
    with server.session("admin@nvidia.com") as admin:
        jobs_before = admin.list_jobs()
    with server.session("member@nvidia.com") as member, pytest.raises(NotAuthorizedError) as info:
        member.submit_job(HELLO_NUMPY)
    assert "member@nvidia.com (role member) may not run submit_job" in str(info.value)
    assert server.stored() == before
    with server.session("admin@nvidia.com") as admin:
        assert admin.list_jobs() == jobs_before
    assert "submit_job from member@nvidia.com refused" in server.log.read_text()


def test_member_submit_via_the_cli_exits_3(server: Server, tmp_path: Path) -> None:
    before = server.stored()
    job = tmp_path / "hello-numpy"
    shutil.copytree(HELLO_NUMPY, job)
    done = subprocess.run(
        [sys.executable, "-m", "shoal", "admin", "--kit", str(server.kits["member@nvidia.com"])]
        + ["--server", server.admin_address, "submit_job", str(job)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert "may not run submit_job" in done.stdout + done.stderr
    assert server.stored() == before


def test_lead_acts_only_on_its_own_jobs(server: Server) -> None:
    with (
        server.session("admin@nvidia.com") as admin,
        server.session("lead@nvidia.com") as lead,
        server.session("member@nvidia.com") as member,
    ):
        theirs = admin.submit_job(HELLO_NUMPY)
        for refused in (lead.abort_job, lead.delete_job, lead.get_job_meta, member.abort_job):
            with pytest.raises(NotAuthorizedError, match="may not run"):
                refused(theirs)
        assert admin.get_job_meta(theirs)["status"] == "SUBMITTED"

        own = lead.submit_job(HELLO_NUMPY)
        with pytest.raises(NotAuthorizedError):
            member.abort_job(own)
        lead.abort_job(own)
        assert lead.get_job_meta(own)["status"] == "FINISHED:ABORTED"
        assert admin.get_job_meta(theirs)["status"] == "SUBMITTED"
        admin.abort_job(theirs)
    log = server.log.read_text()
    assert (
        f"abort_job from lead@nvidia.com refused: lead@nvidia.com (role lead) may not run abort_job job {theirs}"
        in log
    )
