"""Finding 8: an admin sees and opens only the jobs of their role's scope, and
``sys_info`` of a site only within their org (docs/admin.md, "Roles").

A real server and site from real kits, admins of two orgs and every role, each
calling the real Admin service with their own certificate. Before the fix every
admin listed every job of every org with its submitter, and a lead read any
site's ``sys_info``.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from faults.harness import Fed, wait_for, write_job  # noqa: I001

from shoal._proto import shoal_pb2 as pb
from shoal.admin.session import AdminSession
from shoal.errors import NotAuthorizedError, NotFoundError

from .conftest import admin_stub, kit_tls

pytestmark = pytest.mark.slow

ADMINS = (
    ("admin@nvidia.com", "nvidia", "project_admin"),
    ("boss@nvidia.com", "nvidia", "org_admin"),
    ("lead@nvidia.com", "nvidia", "lead"),
    ("lead2@nvidia.com", "nvidia", "lead"),
    ("member@nvidia.com", "nvidia", "member"),
    ("boss@other.org", "other", "org_admin"),
    ("lead@other.org", "other", "lead"),
    ("member@other.org", "other", "member"),
)
#: Who submits each job (and so owns it, and gives it its org).
SUBMITTERS = {"a": "lead@nvidia.com", "b": "lead@other.org", "c": "boss@nvidia.com"}
#: Which of those jobs each admin sees in list_jobs.
SEES = {
    "admin@nvidia.com": "abc",
    "boss@nvidia.com": "ac",
    "lead@nvidia.com": "a",
    "lead2@nvidia.com": "",
    "member@nvidia.com": "ac",
    "boss@other.org": "b",
    "lead@other.org": "b",
    "member@other.org": "b",
}
#: Which jobs each admin may open (details, stats, errors, logs, download).
OPENS = {**SEES, "member@nvidia.com": "", "member@other.org": ""}
#: Whose sys_info of site-1 (org nvidia) is answered.
SITE_INFO = {"admin@nvidia.com", "boss@nvidia.com", "member@nvidia.com"}


def _raw_download(fed: Fed, name: str, job_id: str) -> None:
    """The Download call alone (the session asks get_job_meta first), as NotAuthorizedError."""
    request = pb.AdminRequest(command="download_job", args_json=json.dumps({"job_id": job_id}))
    try:
        for _ in admin_stub(fed, kit_tls(fed.kits[name])).Download(request, timeout=30):
            pass
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
            raise NotAuthorizedError(str(exc.details())) from None
        raise


def _reads(fed: Fed, s: AdminSession, name: str, job_id: str, dest: Path) -> dict[str, object]:
    return {
        "get_job_meta": lambda: s.get_job_meta(job_id),
        "show_stats": lambda: s.show_stats(job_id),
        "show_errors": lambda: s.show_errors(job_id),
        "get_log": lambda: s.get_log(job_id, "site-1"),
        "download_job": lambda: _raw_download(fed, name, job_id),
    }


def test_each_role_sees_and_opens_only_its_scope(fed_factory, tmp_path: Path) -> None:
    fed = fed_factory(sites=("site-1",), admins=ADMINS)
    admin = fed.start_all(sites=("site-1",))
    s = {name: fed.admin(name) for name, _, _ in ADMINS}
    job = write_job(tmp_path / "job", num_rounds=1)

    # Job a holds in its first round (the harness's gate) so it is running
    # while the others wait their turn for the site.
    (fed.gate / "hold").touch()
    ids = {key: s[who].submit_job(job) for key, who in SUBMITTERS.items()}
    wait_for(lambda: (fed.gate / "server.r1.aggregated").exists(), 120, "job a to run")
    assert admin.check_status()["server"]["running_jobs"] == [ids["a"]]
    for name in ("boss@other.org", "lead@other.org", "member@other.org", "lead2@nvidia.com"):
        status = s[name].check_status()
        assert status["server"]["running_jobs"] == [], name
        assert all(ids["a"] not in site["running_jobs"] for site in status["sites"]), name
        assert {site["name"] for site in status["sites"]} == {"site-1"}  # sites stay visible
    assert s["member@nvidia.com"].check_status()["server"]["running_jobs"] == [ids["a"]]
    (fed.gate / "hold").unlink()
    for job_id in ids.values():
        assert admin.wait_for_job(job_id, timeout=120)["status"] == "FINISHED:COMPLETED"

    for name, keys in SEES.items():
        listed = [j["job_id"] for j in s[name].list_jobs()]
        assert listed == [ids[k] for k in keys], name
    # The limit counts what the admin sees: the latest of their own org's jobs.
    assert [j["job_id"] for j in s["member@nvidia.com"].list_jobs(limit=1)] == [ids["c"]]
    assert [j["job_id"] for j in s["boss@other.org"].list_jobs(limit=1)] == [ids["b"]]

    for name, keys in OPENS.items():
        for key, job_id in ids.items():
            for command, call in _reads(fed, s[name], name, job_id, tmp_path).items():
                if key in keys:
                    call()
                else:
                    with pytest.raises(NotAuthorizedError, match=f"may not run {command}"):
                        call()
    assert s["lead@nvidia.com"].download_job(ids["a"], tmp_path / "dl").is_dir()
    # A lead may not delete even their own job (it would erase its logs).
    with pytest.raises(NotAuthorizedError, match="may not run delete_job"):
        s["lead@nvidia.com"].delete_job(ids["a"])
    assert admin.get_job_meta(ids["a"])["status"] == "FINISHED:COMPLETED"

    for name, _, role in ADMINS:
        if name in SITE_INFO:
            assert s[name].sys_info("site-1")["target"] == "site-1"
        else:
            with pytest.raises(NotAuthorizedError, match="may not run sys_info"):
                s[name].sys_info("site-1")
        if role == "lead":  # no sys_info at all, not even whether a site is connected
            for target in ("server", "site-9"):
                with pytest.raises(NotAuthorizedError, match="may not run sys_info"):
                    s[name].sys_info(target)
        else:
            assert s[name].sys_info("server")["target"] == "server"
            with pytest.raises(NotFoundError):
                s[name].sys_info("site-9")
