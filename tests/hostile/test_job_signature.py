"""Jobs signed by their submitter, through real daemons from real kits.

An attacker who can write the server's disk (job.zip, store.db) cannot make
a site run code no admin signed for that job: each site checks the
signature before it unpacks anything, refuses with a reason the submitter
sees, and records ``job.refused`` with the code's hash in its own trail.

The tampered jobs are all submitted while no site is connected, changed on
the server's disk, and only then do the sites connect (one federation for
every case; each test asserts on its own job).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from faults.harness import PROJECT, Fed, write_job

from shoal import jobstatus
from shoal._proto import shoal_pb2 as pb
from shoal.errors import JobValidationError
from shoal.jobs import pack_job
from shoal.jobs.signature import new_job_id, sign_job
from shoal.provision import load_kit, revoke
from shoal.provision.pki import CertificateAuthority, TLSMaterial
from shoal.provision.project import Participant
from shoal.transport import PayloadHeader, frames_from_file, from_rpc_error

from .conftest import admin_stub, kit_tls

ADMIN = "admin@nvidia.com"
LEAD = "lead@nvidia.com"
GONE = "gone@nvidia.com"  # revoked after submitting
SITES = ("site-1", "site-2")

# A job body that leaves a mark if any of its code ever runs at a site.
EVIL_TRAIN = """
import os
from pathlib import Path
Path(os.environ["FAULT_GATE"], "pwned-" + os.environ.get("SHOAL_SITE_NAME", "?")).touch()
"""


def _db(fed: Fed) -> sqlite3.Connection:
    return sqlite3.connect(fed.workspace / "store.db", timeout=30, isolation_level=None)


def _set(fed: Fed, job_id: str, **cols: Any) -> None:
    """Change a job's row behind the server's back (an attacker on its disk)."""
    db = _db(fed)
    try:
        sets = ", ".join(f"{k} = ?" for k in cols)
        db.execute(f"UPDATE jobs SET {sets} WHERE job_id = ?", (*cols.values(), job_id))
    finally:
        db.close()


def _row(fed: Fed, job_id: str) -> dict[str, Any]:
    db = _db(fed)
    db.row_factory = sqlite3.Row
    try:
        return dict(db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone())
    finally:
        db.close()


def _alter_archive(package: Path) -> str:
    """Swap train.py inside the stored job.zip for a marker writer; new sha256."""
    with zipfile.ZipFile(package) as zf:
        entries = {i.filename: zf.read(i) for i in zf.infolist() if not i.is_dir()}
    entries = {
        n: (EVIL_TRAIN.encode() if n.endswith("train.py") else d) for n, d in entries.items()
    }
    with zipfile.ZipFile(package, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return hashlib.sha256(package.read_bytes()).hexdigest()


def _other_ca_tls(name: str) -> TLSMaterial:
    """A key and certificate for ``name`` from a CA of the same project name,
    but not the project's CA."""
    ca = CertificateAuthority.create(PROJECT)
    issued = ca.issue(
        Participant(name=name, type="admin", org="nvidia", role="project_admin"), validity_days=5
    )
    return TLSMaterial(ca_pem=ca.cert_pem, cert_pem=issued.cert_pem, key_pem=issued.key_pem)


def _site_events(fed: Fed, site: str, event: str, job_id: str) -> list[dict[str, Any]]:
    path = fed.kits[site] / "audit" / "audit.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [e for e in lines if e.get("event") == event and e.get("job_id") == job_id]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    fed = Fed(
        tmp_path_factory.mktemp("job-signature"),
        admins=((ADMIN, "nvidia", "project_admin"), (LEAD, "nvidia", "lead"), (GONE, "nvidia", "lead")),
    )  # fmt: skip
    fed.start_server()
    try:
        yield fed
    finally:
        fed.close()


@pytest.fixture(scope="module")
def job_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_job(
        tmp_path_factory.mktemp("job") / "signed-job",
        num_rounds=1,
        min_clients=2,
        round_timeout_s=60,
        start_timeout_s=600,
    )


@pytest.fixture(scope="module")
def tampered(fed: Fed, job_folder: Path) -> dict[str, Any]:
    """Jobs submitted with no site connected, changed on the server's disk, then run."""
    admin = fed.admin(ADMIN)
    jobs = {
        case: admin.submit_job(job_folder)
        for case in ("altered", "other_admin", "other_ca", "replay_source", "replayed", "unsigned")
    }
    jobs["revoked"] = fed.admin(GONE).submit_job(job_folder)
    out: dict[str, Any] = {"jobs": jobs}

    # job.zip rewritten, and the stored hash and size with it.
    package = fed.workspace / "jobs" / jobs["altered"] / "job.zip"
    out["altered_sha256"] = _alter_archive(package)
    _set(fed, jobs["altered"], package_sha256=out["altered_sha256"],
         package_size=package.stat().st_size)  # fmt: skip

    # Another admin's genuine signature of this very job id and archive.
    sha = _row(fed, jobs["other_admin"])["package_sha256"]
    lead = load_kit(fed.kits[LEAD]).tls
    theirs = sign_job(job_id=jobs["other_admin"], archive_sha256=sha, tls=lead)
    _set(fed, jobs["other_admin"], signature_json=json.dumps(theirs.to_json()))

    # The submitter's name, signed under a CA that is not the project's.
    foreign = sign_job(job_id=jobs["other_ca"], archive_sha256=sha, tls=_other_ca_tls(ADMIN))
    _set(fed, jobs["other_ca"], signature_json=json.dumps(foreign.to_json()))

    # The signature of an identical archive submitted as another job.
    source = _row(fed, jobs["replay_source"])["signature_json"]
    _set(fed, jobs["replayed"], signature_json=source)

    # A job from before signed jobs (or whose signature was removed).
    _set(fed, jobs["unsigned"], signature_json=None)

    # Its submitter revoked while it waits. site-1 loses its own copy of the
    # CRL: it relies on the one the server sends; site-2 has its own.
    revoke(fed.project_file, fed.kits_root, GONE)
    (fed.kits["site-1"] / "local" / "crl.pem").unlink()

    for site in SITES:
        fed.start_site(site)
    out["meta"] = {case: admin.wait_for_job(job_id, timeout=240) for case, job_id in jobs.items()}
    return out


def _refused_everywhere(tampered: dict[str, Any], case: str, reason: str) -> str:
    """The job failed, and its error (what the submitter sees) says that
    each site refused it, and why."""
    meta = tampered["meta"][case]
    assert meta.status == jobstatus.EXECUTION_EXCEPTION, meta
    assert meta.error is not None
    said = {part.split(":", 1)[0]: part for part in meta.error.split("refused by ")[1:]}
    for site in SITES:
        assert reason in said.get(site, ""), meta.error
    return meta.error


def _nothing_unpacked(fed: Fed, job_id: str) -> None:
    for site in SITES:
        folder = fed.kits[site] / "jobs" / job_id
        assert (folder / "job.zip").is_file(), "the package was fetched"
        assert not (folder / "job").exists(), f"{site} unpacked a refused job"
        [refused] = _site_events(fed, site, "job.refused", job_id)
        assert not _site_events(fed, site, "job.accepted", job_id)
        assert refused["signer"] == ""


def test_a_job_altered_on_the_servers_disk_is_refused_by_every_site_before_unpacking(
    fed: Fed, tampered: dict[str, Any]
) -> None:
    job_id = tampered["jobs"]["altered"]
    _refused_everywhere(tampered, "altered", "job archive changed after it was signed")
    _nothing_unpacked(fed, job_id)
    for site in SITES:
        [refused] = _site_events(fed, site, "job.refused", job_id)
        assert refused["code_sha256"] == tampered["altered_sha256"]
        assert refused["submitter"] == ADMIN
        assert "changed after it was signed" in refused["reason"]
    assert not list(fed.gate.glob("pwned-*")), "the altered code ran"
    # The submitter sees why in the listing too.
    [listed] = [j for j in fed.admin(ADMIN).list_jobs() if j.job_id == job_id]
    assert listed.error is not None and "changed after it was signed" in listed.error


def test_a_signature_by_another_admin_than_the_submitter_is_refused(
    fed: Fed, tampered: dict[str, Any]
) -> None:
    _refused_everywhere(
        tampered,
        "other_admin",
        f"recorded as submitted by {ADMIN} (nvidia), but {LEAD} (nvidia) signed it",
    )
    _nothing_unpacked(fed, tampered["jobs"]["other_admin"])


def test_a_job_whose_signer_was_revoked_is_refused(fed: Fed, tampered: dict[str, Any]) -> None:
    _refused_everywhere(tampered, "revoked", f"{GONE}'s certificate (serial")
    _refused_everywhere(tampered, "revoked", "is revoked")
    _nothing_unpacked(fed, tampered["jobs"]["revoked"])


def test_a_signature_under_another_ca_is_refused(fed: Fed, tampered: dict[str, Any]) -> None:
    _refused_everywhere(tampered, "other_ca", "was not issued by this project's CA")
    _nothing_unpacked(fed, tampered["jobs"]["other_ca"])


def test_a_signature_replayed_from_another_job_is_refused(
    fed: Fed, tampered: dict[str, Any]
) -> None:
    source = tampered["jobs"]["replay_source"]
    _refused_everywhere(tampered, "replayed", f"made for job {source}, not for this job")
    _nothing_unpacked(fed, tampered["jobs"]["replayed"])
    # The job it was copied from, the same archive, ran with it.
    assert tampered["meta"]["replay_source"].status == jobstatus.COMPLETED
    for site in SITES:
        [accepted] = _site_events(fed, site, "job.accepted", source)
        assert accepted["signer"]["name"] == ADMIN
        assert accepted["signer"]["role"] == "project_admin"


def test_an_unsigned_job_is_listed_and_refused(fed: Fed, tampered: dict[str, Any]) -> None:
    job_id = tampered["jobs"]["unsigned"]
    _refused_everywhere(tampered, "unsigned", "is not signed by its submitter")
    _nothing_unpacked(fed, job_id)
    admin = fed.admin(ADMIN)
    assert job_id in [j.job_id for j in admin.list_jobs()]
    # Its submitter's tool will not sign it again blindly.
    with pytest.raises(JobValidationError, match="not cloned: job .* is not signed"):
        admin.clone_job(job_id)


def test_a_clone_runs_with_the_cloner_as_signer(
    fed: Fed, tampered: dict[str, Any], job_folder: Path
) -> None:
    lead = fed.admin(LEAD)
    original = lead.submit_job(job_folder)
    assert lead.wait_for_job(original, timeout=120).status == jobstatus.COMPLETED
    admin = fed.admin(ADMIN)
    clone = admin.clone_job(original)
    meta = admin.wait_for_job(clone, timeout=120)
    assert meta.status == jobstatus.COMPLETED, meta
    assert meta.submitter == ADMIN
    assert meta.signature is not None and meta.signature["document"]["submitter"] == ADMIN
    assert meta.signature["document"]["job_id"] == clone
    for site in SITES:
        [first] = _site_events(fed, site, "job.accepted", original)
        [second] = _site_events(fed, site, "job.accepted", clone)
        assert first["signer"]["name"] == LEAD and second["signer"]["name"] == ADMIN
        assert first["code_sha256"] == second["code_sha256"]
    # A job altered on disk is not laundered by cloning it.
    with pytest.raises(JobValidationError, match="not cloned: .*changed after it was signed"):
        admin.clone_job(tampered["jobs"]["altered"])


def _raw_submit(fed: Fed, who: str, archive: Path, signature: Any) -> str:
    stub = admin_stub(fed, kit_tls(fed.kits[who]))
    meta = {"source": archive.name, "signature": signature}
    header = PayloadHeader(kind="job", meta=meta)
    try:
        reply = stub.Submit(frames_from_file(header, archive), timeout=60)
    except grpc.RpcError as exc:
        raise from_rpc_error(exc, "submit_job") from None
    assert isinstance(reply, pb.AdminReply)
    return str(json.loads(reply.result_json)["job_id"])


def test_the_server_refuses_a_job_not_signed_by_its_submitter(
    fed: Fed, job_folder: Path, tmp_path: Path
) -> None:
    archive = pack_job(job_folder, tmp_path / "job.zip")
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    admin = fed.admin(ADMIN)
    before = [j.job_id for j in admin.list_jobs()] or [admin.submit_job(job_folder)]
    stored = sorted(p.name for p in (fed.workspace / "jobs").iterdir())
    lead_tls, admin_tls = load_kit(fed.kits[LEAD]).tls, load_kit(fed.kits[ADMIN]).tls
    cases = {
        "job is not signed": None,
        f"names '{LEAD}' as submitter, but {ADMIN} is submitting": sign_job(
            job_id=new_job_id(), archive_sha256=sha, tls=lead_tls
        ).to_json(),
        "changed after it was signed": sign_job(
            job_id=new_job_id(), archive_sha256="0" * 64, tls=admin_tls
        ).to_json(),
        "not issued by this project's CA": sign_job(
            job_id=new_job_id(), archive_sha256=sha, tls=_other_ca_tls(ADMIN)
        ).to_json(),
        "is not a UUID": sign_job(job_id="../../etc", archive_sha256=sha, tls=admin_tls).to_json(),
        "already in use": sign_job(job_id=before[0], archive_sha256=sha, tls=admin_tls).to_json(),
    }
    for reason, signature in cases.items():
        with pytest.raises(JobValidationError, match=reason):
            _raw_submit(fed, ADMIN, archive, signature)
    assert [j.job_id for j in admin.list_jobs()] == before
    assert sorted(p.name for p in (fed.workspace / "jobs").iterdir()) == stored
