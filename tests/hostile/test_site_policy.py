"""Issue 21, item 1: each site's ``local/policy.yml`` decides which jobs it runs.

A real federation from real kits (one per module: each costs seconds). A job
the policy refuses is refused before any of its code is unpacked, the
reason reaches the submitter through the admin API, and the site's log and
audit trail keep it; an edit applies without a restart; the server refuses
at submit a job that no site it targets would accept, by the summaries the
sites publish.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults.harness import Fed, wait_for, write_job

from shoal.admin import AdminSession
from shoal.errors import JobValidationError
from shoal.jobs import pack_job
from shoal.provision.templates import SITE_POLICY_YML

pytestmark = pytest.mark.slow

PROJECT_ADMIN = "admin@nvidia.com"
#: An admin of another organisation, allowed to submit by the project (role lead).
OUTSIDER = "lead@other.org"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    fed = Fed(
        tmp_path_factory.mktemp("policy"),
        # site-3 is in the project but never started: its policy is unknown.
        sites=("site-1", "site-2", "site-3"),
        admins=((PROJECT_ADMIN, "nvidia", "project_admin"), (OUTSIDER, "other", "lead")),
    )
    fed.start_all(sites=("site-1", "site-2"))
    yield fed
    fed.close()


@pytest.fixture
def admin(fed: Fed) -> AdminSession:
    return fed.admin(PROJECT_ADMIN)


def _policy(fed: Fed, site: str) -> Path:
    return fed.kits[site] / "local" / "policy.yml"


def _set_policy(fed: Fed, site: str, text: str) -> str:
    path = _policy(fed, site)
    path.write_text(text)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _published(admin: AdminSession, site: str) -> str:
    status = {s.name: s for s in admin.check_status().sites}
    return str(status[site].policy.get("sha256") or "")


def _wait_published(admin: AdminSession, want: dict[str, str]) -> None:
    wait_for(
        lambda: all(_published(admin, site) == sha for site, sha in want.items()),
        30,
        f"the server to hear the new policies of {', '.join(want)}",
    )


def _audit(fed: Fed, site: str) -> list[dict]:
    path = fed.kits[site] / "audit" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _job(folder: Path, name: str, *, workflow: str = "fedavg") -> Path:
    write_job(folder, name=name, size=10, num_rounds=1, sites=["site-1"], round_timeout_s=60)
    yml = folder / "job.yml"
    yml.write_text(yml.read_text().replace("name: fedavg", f"name: {workflow}"))
    return folder


def test_the_provisioned_policy_is_published_at_connect(fed: Fed, admin: AdminSession) -> None:
    assert _policy(fed, "site-1").read_text() == SITE_POLICY_YML
    sha = hashlib.sha256(SITE_POLICY_YML.encode()).hexdigest()
    _wait_published(admin, {"site-1": sha, "site-2": sha})
    status = {s.name: s for s in admin.check_status().sites}
    assert status["site-1"].policy["code"] == "any"
    assert status["site-3"].policy == {}  # never connected: nothing known


def test_a_refused_job_is_refused_before_any_code_is_unpacked(
    fed: Fed, admin: AdminSession, tmp_path: Path
) -> None:
    # The policy changes while the site is down: the server still holds the
    # old summary (allow everything) and takes the jobs; the site decides.
    allowed = pack_job(_job(tmp_path / "z", "listed", workflow="fedavgm"), tmp_path / "z.zip")
    listed = hashlib.sha256(allowed.read_bytes()).hexdigest()
    fed.kill("site-1", 15)
    try:
        outsider_job = fed.admin(OUTSIDER).submit_job(_job(tmp_path / "x", "from-outsider"))
        unlisted_job = admin.submit_job(_job(tmp_path / "y", "unlisted"))
        workflow_job = admin.submit_job(allowed)
        sha = _set_policy(
            fed,
            "site-1",
            "submitters: {orgs: [nvidia]}\n"
            f"code: {{allow: sha256, sha256: [{listed}]}}\n"
            "workflows: [fedavg]\n",
        )
    finally:
        fed.start_site("site-1")
    expected = {
        outsider_job: "org other may not run jobs here (allowed: nvidia)",
        unlisted_job: "is not on the site's allow-list",
        workflow_job: "workflow fedavgm may not run here (allowed: fedavg)",
    }
    try:
        for job_id, reason in expected.items():
            meta = admin.wait_for_job(job_id, timeout=120)
            assert meta.status.startswith("FINISHED:") and meta.status != "FINISHED:COMPLETED"
            assert "refused by site site-1's policy: " in str(meta.error), meta
            assert reason in str(meta.error), meta
            listed_jobs = {j.job_id: j for j in admin.list_jobs()}
            assert reason in str(listed_jobs[job_id].error)
            # Nothing of the job's code reached the disk: no job/ folder.
            folder = fed.kits["site-1"] / "jobs" / job_id
            assert not (folder / "job").exists()
            assert reason in (folder / "log.txt").read_text()
        refused = {e["job_id"]: e for e in _audit(fed, "site-1") if e["event"] == "job.refused"}
        for job_id, reason in expected.items():
            assert reason in refused[job_id]["reason"]
            assert len(refused[job_id]["code_sha256"]) == 64
        assert refused[outsider_job]["submitter"] == OUTSIDER
        assert refused[outsider_job]["submitter_role"] == "lead"
        site_log = (fed.logs / "site-1.out").read_text()
        for job_id in expected:
            assert f"job {job_id}" in site_log and "refused by site site-1's policy" in site_log
        _wait_published(admin, {"site-1": sha})
    finally:
        _wait_published(admin, {"site-1": _set_policy(fed, "site-1", SITE_POLICY_YML)})


def test_an_edit_applies_without_a_restart(fed: Fed, admin: AdminSession, tmp_path: Path) -> None:
    # A rule the server cannot check (the site's own filters): the site refuses.
    sha = _set_policy(fed, "site-1", "filters: {result_out: [clip]}\n")
    job_id = admin.submit_job(_job(tmp_path / "a", "needs-clip"))
    try:
        meta = admin.wait_for_job(job_id, timeout=120)
        assert "refused by site site-1's policy: filter clip must run at result_out" in str(
            meta.error
        )
        changed = [e for e in _audit(fed, "site-1") if e["event"] == "policy.changed"]
        assert changed and changed[-1]["sha256"] == sha
        assert changed[-1]["summary"]["filters"] == {"result_out": ["clip"]}
    finally:
        default = _set_policy(fed, "site-1", SITE_POLICY_YML)
        _wait_published(admin, {"site-1": default})
    # Back to the default: the next job runs, on the same daemon.
    job_id = admin.submit_job(_job(tmp_path / "b", "after-edit"))
    assert admin.wait_for_job(job_id, timeout=120).status == "FINISHED:COMPLETED"
    assert _audit(fed, "site-1")[-1]["event"] != "policy.invalid"
    assert [e for e in _audit(fed, "site-1") if e["event"] == "policy.changed"][-1][
        "sha256"
    ] == default


def test_the_server_refuses_at_submit_a_job_no_site_would_take(
    fed: Fed, admin: AdminSession, tmp_path: Path
) -> None:
    outsider = fed.admin(OUTSIDER)
    # Taken while the sites allow everyone; cloned once they no longer do.
    earlier = outsider.submit_job(
        write_job(tmp_path / "e", name="earlier", size=10, sites=["site-1", "site-2"])
    )
    admin.abort_job(earlier)
    shas = {
        site: _set_policy(fed, site, "submitters: {orgs: [nvidia]}\n")
        for site in ("site-1", "site-2")
    }
    try:
        _wait_published(admin, shas)  # published with a heartbeat: no restart
        job = write_job(tmp_path / "j", name="everywhere", size=10, sites=["site-1", "site-2"])
        with pytest.raises(JobValidationError) as err:
            outsider.submit_job(job)
        message = str(err.value)
        assert "needs 1 site(s) and only 0 of 2 would accept it" in message
        assert "site-1: submitter lead@other.org's org other may not run jobs here" in message
        assert "site-2: submitter" in message
        assert not [j for j in outsider.list_jobs() if j.name == "everywhere"]
        with pytest.raises(JobValidationError, match="only 0 of 2 would accept it"):
            outsider.clone_job(earlier)
        # A site whose policy the server does not know yet does not refuse:
        # it decides when the job reaches it.
        unknown = write_job(tmp_path / "u", name="to-site-3", size=10, sites=["site-1", "site-3"])
        job_id = outsider.submit_job(unknown)
        admin.abort_job(job_id)
        # The project's own admins are still welcome.
        assert admin.submit_job(write_job(tmp_path / "ok", name="ok", size=10, num_rounds=1))
    finally:
        _wait_published(admin, {site: _set_policy(fed, site, SITE_POLICY_YML) for site in shas})


def test_a_bad_policy_file_refuses_every_job_and_says_why(
    fed: Fed, admin: AdminSession, tmp_path: Path
) -> None:
    _set_policy(fed, "site-2", "resources: {memory_mb: lots}\n")
    try:
        _wait_published(admin, {"site-2": "invalid"})
        job = write_job(tmp_path / "j", name="to-site-2", size=10, sites=["site-2"])
        with pytest.raises(JobValidationError) as err:
            admin.submit_job(job)
        assert "site-2: its policy file is invalid" in str(err.value)
        assert "resources.memory_mb: must be a whole number > 0, got 'lots'" in str(err.value)
        invalid = [e for e in _audit(fed, "site-2") if e["event"] == "policy.invalid"]
        assert invalid and "resources.memory_mb" in invalid[-1]["error"]
    finally:
        _wait_published(admin, {"site-2": _set_policy(fed, "site-2", SITE_POLICY_YML)})


def test_only_jobs_signed_by_a_listed_signer_run(
    fed: Fed, admin: AdminSession, tmp_path: Path
) -> None:
    # The signer is the verified signature's, not a claim in the request.
    sha = _set_policy(fed, "site-1", f"code: {{allow: signed, signers: [{PROJECT_ADMIN}]}}\n")
    try:
        _wait_published(admin, {"site-1": sha})
        ok = admin.submit_job(_job(tmp_path / "a", "signed-by-listed"))
        other = fed.admin(OUTSIDER).submit_job(_job(tmp_path / "b", "signed-by-other"))
        assert admin.wait_for_job(ok, timeout=120).status == "FINISHED:COMPLETED"
        meta = admin.wait_for_job(other, timeout=120)
        assert f"signer {OUTSIDER} is not allowed here (allowed: {PROJECT_ADMIN})" in str(
            meta.error
        ), meta
        verdicts = ("job.accepted", "job.refused")
        trail = {e["job_id"]: e for e in _audit(fed, "site-1") if e["event"] in verdicts}
        assert trail[ok]["signer"]["name"] == PROJECT_ADMIN
        assert trail[other]["event"] == "job.refused"
        assert trail[other]["signer"]["name"] == OUTSIDER
        assert not (fed.kits["site-1"] / "jobs" / other / "job").exists()
    finally:
        _wait_published(admin, {"site-1": _set_policy(fed, "site-1", SITE_POLICY_YML)})
