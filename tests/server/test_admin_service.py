"""The Admin service without a daemon: a real job store in a temporary folder,
a real site registry, and a fake ``identify``."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from shoal import jobstatus
from shoal._proto import shoal_pb2 as pb
from shoal.errors import ConfigError, JobValidationError, NotAuthorizedError, NotFoundError
from shoal.jobs.signature import new_job_id, sign_job
from shoal.provision import Identity
from shoal.provision.pki import CertificateAuthority, TLSMaterial
from shoal.provision.project import Participant
from shoal.server.admin_service import AdminParts, AdminService
from shoal.server.runs import Runs
from shoal.server.sessions import SiteRegistry, SiteSession
from shoal.server.store import JobRecord, JobStore

from .fakes import Aborted, FakeContext, admin, identify_as


class Server:
    """What the service asks of the server, recorded."""

    def __init__(self) -> None:
        self.woken = 0
        self.stopped = threading.Event()
        self.restart: bool | None = None

    def status(self) -> dict[str, Any]:
        return {
            "server": {"name": "server1", "running_jobs": ["j-a", "j-b"]},
            "sites": [{"name": "site-1", "running_jobs": ["j-b", "gone"]}],
        }

    def wake(self) -> None:
        self.woken += 1

    def request_stop(self, *, restart: bool = False) -> None:
        self.restart = restart
        self.stopped.set()


#: The project CA of these tests: the service checks job signatures against it.
CA = CertificateAuthority.create("admin_service_tests")


def admin_tls(name: str, org: str, role: str, ca: CertificateAuthority = CA) -> TLSMaterial:
    """A real admin key and certificate, to sign jobs with."""
    issued = ca.issue(Participant(name=name, type="admin", org=org, role=role), validity_days=5)
    return TLSMaterial(ca_pem=ca.cert_pem, cert_pem=issued.cert_pem, key_pem=issued.key_pem)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    s = JobStore(tmp_path / "ws")
    yield s
    s.close()


def service(
    store: JobStore,
    who: Identity,
    server: Server | None = None,
    registry: SiteRegistry | None = None,
) -> AdminService:
    server = server or Server()
    return AdminService(
        AdminParts(
            identify=identify_as(who),
            store=store,
            registry=registry or SiteRegistry(heartbeat_timeout_s=30),
            runs=Runs(),
            status=server.status,
            sys_info=lambda: {"cpus": 1},
            request_stop=server.request_stop,
            wake_scheduler=server.wake,
            project_sites=lambda: ("site-1", "site-2"),
            submitter_quota_bytes=1 << 30,
            ca_pem=CA.cert_pem,
        )
    )


def add_job(store: JobStore, submitter: str, org: str, name: str = "hello") -> JobRecord:
    staging = store.staging_folder()
    (staging / "job.zip").write_bytes(b"zip")
    (staging / "job").mkdir()
    return store.create(
        name=name,
        spec={"name": name},
        staged_folder=staging,
        submitter=submitter,
        submitter_org=org,
        package_sha256="0" * 64,
        package_size=3,
        num_rounds=2,
    )


def test_list_jobs_shows_each_admin_what_its_role_may_see(store: JobStore) -> None:
    mine = add_job(store, "lead@a", "a", "mine")
    add_job(store, "other@a", "a", "org-mate")
    add_job(store, "lead@b", "b", "foreign")
    seen = {}
    for role in ("project_admin", "org_admin", "lead"):
        who = admin("lead@a", "a", role)
        seen[role] = [j["name"] for j in service(store, who).list_jobs(who, {})]
    assert seen == {
        "project_admin": ["mine", "org-mate", "foreign"],
        "org_admin": ["mine", "org-mate"],
        "lead": ["mine"],
    }
    # The limit counts the jobs this admin sees (the latest ones).
    org = admin("oa@a", "a", "org_admin")
    assert [j["name"] for j in service(store, org).list_jobs(org, {"limit": 1})] == ["org-mate"]
    assert service(store, org).list_jobs(org, {"name": "mine"})[0]["job_id"] == mine.job_id


def test_job_commands_are_authorized_against_the_job(store: JobStore) -> None:
    rec = add_job(store, "lead@b", "b")
    lead = admin("lead@a", "a", "lead")
    with pytest.raises(NotAuthorizedError, match="may not run get_job_meta"):
        service(store, lead).get_job_meta(lead, {"job_id": rec.job_id})
    with pytest.raises(ConfigError, match="job_id is required"):
        service(store, lead).get_job_meta(lead, {})
    with pytest.raises(NotFoundError):
        service(store, lead).get_job_meta(lead, {"job_id": "nope"})


def test_a_job_aborted_before_it_starts_is_recorded_aborted(store: JobStore) -> None:
    rec = add_job(store, "admin@a", "a")
    who = admin()
    out = service(store, who).abort_job(who, {"job_id": rec.job_id[:8]})
    assert out["status"] == jobstatus.ABORTED
    assert store.get(rec.job_id).error == "aborted by admin@a before it started"
    with pytest.raises(ConfigError, match="already finished"):
        service(store, who).abort_job(who, {"job_id": rec.job_id})


def test_clone_stores_a_copy_for_the_cloner_and_wakes_the_scheduler(store: JobStore) -> None:
    rec = add_job(store, "lead@a", "a")
    server = Server()
    who = admin("oa@a", "a", "org_admin")
    sig = sign_job(
        job_id=new_job_id(),
        archive_sha256=rec.package_sha256,
        tls=admin_tls("oa@a", "a", "org_admin"),
    )
    args = {"job_id": rec.job_id, "signature": sig.to_json()}
    new = service(store, who, server).clone_job(who, args)["job_id"]
    assert new == sig.job_id != rec.job_id
    assert store.get(new).submitter == "oa@a"
    assert store.get(new).signature == sig.to_json()
    assert server.woken == 1


def test_a_clone_must_be_signed_by_the_cloner_over_the_stored_archive(store: JobStore) -> None:
    rec = add_job(store, "lead@a", "a")
    who = admin("oa@a", "a", "org_admin")
    svc = service(store, who)
    mine = admin_tls("oa@a", "a", "org_admin")
    with pytest.raises(JobValidationError, match="job is not signed"):
        svc.clone_job(who, {"job_id": rec.job_id})
    other = sign_job(job_id=new_job_id(), archive_sha256="1" * 64, tls=mine)
    with pytest.raises(JobValidationError, match="changed after it was signed"):
        svc.clone_job(who, {"job_id": rec.job_id, "signature": other.to_json()})
    theirs = sign_job(
        job_id=new_job_id(),
        archive_sha256=rec.package_sha256,
        tls=admin_tls("lead@a", "a", "lead"),
    )
    with pytest.raises(JobValidationError, match="but oa@a is submitting"):
        svc.clone_job(who, {"job_id": rec.job_id, "signature": theirs.to_json()})
    foreign = sign_job(
        job_id=new_job_id(),
        archive_sha256=rec.package_sha256,
        tls=admin_tls("oa@a", "a", "org_admin", CertificateAuthority.create("other")),
    )
    with pytest.raises(JobValidationError, match="not issued by this project's CA"):
        svc.clone_job(who, {"job_id": rec.job_id, "signature": foreign.to_json()})
    taken = sign_job(job_id=rec.job_id, archive_sha256=rec.package_sha256, tls=mine)
    with pytest.raises(JobValidationError, match="already in use"):
        svc.clone_job(who, {"job_id": rec.job_id, "signature": taken.to_json()})
    assert [r.job_id for r in store.list()] == [rec.job_id]


def test_delete_tells_the_connected_sites_that_ran_the_job(store: JobStore) -> None:
    rec = add_job(store, "admin@a", "a")
    store.update(rec.job_id, status=jobstatus.COMPLETED, sites=["site-1", "site-2"])
    registry = SiteRegistry(heartbeat_timeout_s=30)
    session = SiteSession(name="site-1", org="a", peer="p")
    registry.open(session)
    who = admin()
    out = service(store, who, registry=registry).delete_job(who, {"job_id": rec.job_id})
    assert out == {"job_id": rec.job_id, "sites_told": ["site-1"]}
    assert session.events.get_nowait().forget_job.job_id == rec.job_id
    with pytest.raises(NotFoundError):
        store.get(rec.job_id)


def test_check_status_lists_only_the_running_jobs_an_admin_may_see(store: JobStore) -> None:
    a = add_job(store, "lead@a", "a")
    b = add_job(store, "lead@b", "b")

    class Status(Server):
        def status(self) -> dict[str, Any]:
            return {
                "server": {"running_jobs": [a.job_id, b.job_id]},
                "sites": [{"name": "site-1", "running_jobs": [b.job_id, "unknown"]}],
            }

    member = admin("m@a", "a", "member")
    out = service(store, member, Status()).check_status(member, {})
    assert out["server"]["running_jobs"] == [a.job_id]
    assert out["sites"][0]["running_jobs"] == []
    boss = admin()
    assert service(store, boss, Status()).check_status(boss, {})["sites"][0]["running_jobs"] == [
        b.job_id,
        "unknown",
    ]


def test_restart_of_the_server_replies_then_asks_it_to_stop(store: JobStore) -> None:
    server = Server()
    who = admin()
    assert service(store, who, server).restart(who, {}) == {"targets": ["server"]}
    assert server.stopped.wait(10)
    assert server.restart is True


def test_a_site_command_for_a_site_not_connected_is_not_found(store: JobStore) -> None:
    who = admin()
    with pytest.raises(NotFoundError, match="site site-9 is not connected"):
        service(store, who).shutdown(who, {"target": "site-9"})
    assert service(store, who).sys_info(who, {}) == {"target": "server", "cpus": 1}


def test_call_decodes_dispatches_and_maps_errors_to_status_codes(store: JobStore) -> None:
    add_job(store, "admin@a", "a")
    svc = service(store, admin())
    reply = svc.Call(pb.AdminRequest(command="list_jobs", args_json="{}"), FakeContext())
    assert reply.ok and '"name": "hello"' in reply.result_json
    with pytest.raises(Aborted) as info:
        svc.Call(pb.AdminRequest(command="format_disk"), FakeContext())
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown command 'format_disk'" in info.value.details
    with pytest.raises(Aborted) as info:
        svc.Call(pb.AdminRequest(command="list_jobs", args_json="[1]"), FakeContext())
    assert info.value.details == "arguments must be a JSON object"


def test_show_stats_carries_the_cross_site_matrix_in_its_shape_only(
    store: JobStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rec = add_job(store, "admin@a", "a")
    who = admin()
    svc = service(store, who)
    assert "cross_site_eval" not in svc.show_stats(who, {"job_id": rec.job_id})
    rec.run_dir.mkdir(parents=True, exist_ok=True)
    path = rec.run_dir / "cross_site_eval.json"
    matrix = {
        "global_model": "final",
        "models": ["global"],
        "sites": ["site-1"],
        "results": {"global": {"site-1": {"num_examples": 3, "metrics": {"loss": 0.5}}}},
        "missing": {},
        "not_submitted": {},
    }
    # The run folder is the job's to write: what is not the matrix's shape is left out.
    path.write_text(json.dumps({**matrix, "secret": "x"}))
    assert svc.show_stats(who, {"job_id": rec.job_id})["cross_site_eval"] == matrix
    path.write_text("{not json")
    assert "cross_site_eval" not in svc.show_stats(who, {"job_id": rec.job_id})
    assert "cross_site_eval.json left out of show_stats: not JSON" in caplog.text
    # A link is not followed, to a JSON file of the server's or anywhere else.
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(matrix))
    path.unlink()
    path.symlink_to(elsewhere)
    assert "cross_site_eval" not in svc.show_stats(who, {"job_id": rec.job_id})
    assert "cannot open it" in caplog.text
