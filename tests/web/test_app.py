"""The dashboard app with a fake admin session: logins, CSRF, Origin and Host
checks, actions and their refusals, the event stream. The browser and a real
federation: tests/integration/test_dashboard.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

pytest.importorskip("starlette")
from admin.fakes import JOB, FakeSession
from starlette.testclient import TestClient

from shoal.errors import ConfigError, NotAuthorizedError
from shoal.web.app import create_app, transfer_jobs
from shoal.web.live import Hub
from shoal.web.security import COOKIE, Guard
from shoal.web.serve import DashboardConfig, check_bind

BASE = "http://127.0.0.1:8765"


def client(session: FakeSession, tmp_path: Path) -> TestClient:
    app = create_app(
        session,
        guard=Guard(login_token="secret"),
        allowed_hosts=["127.0.0.1", "localhost"],
        transfer=tmp_path,
    )
    return TestClient(app, base_url=BASE, follow_redirects=False)


def logged_in(c: TestClient) -> str:
    """Log in; returns the page's CSRF token."""
    r = c.get("/?token=secret")
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert "httponly" in r.headers["set-cookie"].lower()
    assert "samesite=strict" in r.headers["set-cookie"].lower()
    page = c.get("/jobs")
    assert page.status_code == 200
    return page.text.split('data-csrf="', 1)[1].split('"', 1)[0]


def test_pages_need_the_login_token(tmp_path: Path) -> None:
    with client(FakeSession(), tmp_path) as c:
        assert c.get("/").status_code == 401
        assert "printed" in c.get("/jobs").text
        assert c.get("/?token=wrong").status_code == 401
        assert c.get("/events?topic=jobs").status_code == 401
        logged_in(c)
        page = c.get("/")
        assert page.status_code == 200
        assert "default-src 'self'" in page.headers["content-security-policy"]


def test_a_foreign_host_name_is_refused(tmp_path: Path) -> None:
    # DNS rebinding: a name that resolves to 127.0.0.1 but is not this machine's.
    with client(FakeSession(), tmp_path) as c:
        assert c.get("/", headers={"host": "evil.example:8765"}).status_code == 400


def test_actions_need_csrf_token_and_origin(tmp_path: Path) -> None:
    session = FakeSession()
    with client(session, tmp_path) as c:
        token = logged_in(c)
        job = JOB["job_id"]
        r = c.post(f"/actions/abort_job/{job}", headers={"origin": BASE})
        assert r.status_code == 403 and "CSRF" in r.json()["message"]
        r = c.post(
            f"/actions/abort_job/{job}",
            headers={"origin": "http://evil.example", "x-csrf-token": token},
        )
        assert r.status_code == 403 and "did not come from" in r.json()["message"]
        assert not any(call[0] == "abort_job" for call in session.calls)
        r = c.post(f"/actions/abort_job/{job}", headers={"origin": BASE, "x-csrf-token": token})
        assert r.status_code == 200 and r.json()["ok"]
        assert ("abort_job", (job,), {}) in session.calls
        # The form field works as the header does.
        r = c.post(
            f"/actions/clone_job/{job}", data={"csrf_token": token}, headers={"origin": BASE}
        )
        assert r.json() == {
            "ok": True,
            "message": f"Cloned job {job} as new-job-2.",
            "job_id": "new-job-2",
        }


def test_a_refused_action_says_why_with_the_role(tmp_path: Path) -> None:
    session = FakeSession(delete_job=NotAuthorizedError("lead may not delete_job"))
    session.role = "lead"
    with client(session, tmp_path) as c:
        token = logged_in(c)
        r = c.post(
            f"/actions/delete_job/{JOB['job_id']}", headers={"origin": BASE, "x-csrf-token": token}
        )
        assert r.status_code == 403
        assert r.json() == {
            "ok": False,
            "message": "Not allowed for your role (lead): lead may not delete_job",
        }


def test_the_page_offers_only_what_the_role_may_run(tmp_path: Path) -> None:
    session = FakeSession()
    session.role = "member"
    with client(session, tmp_path) as c:
        logged_in(c)
        assert 'id="submit-form"' not in c.get("/jobs").text
        page = c.get(f"/jobs/{JOB['job_id']}").text
        assert 'data-action="abort_job"' not in page and 'data-allowed=""' in page


def test_submit_a_folder_and_an_uploaded_archive(tmp_path: Path) -> None:
    session = FakeSession()
    (tmp_path / "hello-numpy").mkdir()
    (tmp_path / "hello-numpy" / "job.yml").write_text("name: hello-numpy\n")
    assert transfer_jobs(tmp_path) == ["hello-numpy"]
    with client(session, tmp_path) as c:
        token = logged_in(c)
        headers = {"origin": BASE, "x-csrf-token": token}
        r = c.post("/actions/submit_job", data={"source": "hello-numpy"}, headers=headers)
        assert r.json()["job_id"] == "new-job-1"
        assert ("submit_job", ("hello-numpy",), {}) in session.calls
        r = c.post(
            "/actions/submit_job",
            files={"archive": ("job.zip", b"PK\x05\x06" + b"\0" * 18, "application/zip")},
            headers=headers,
        )
        assert r.json()["ok"]
        uploaded = session.calls[-1][1][0]
        assert isinstance(uploaded, Path) and uploaded.name == "job.zip"
        assert not uploaded.exists()  # the upload's copy is gone once submitted
        r = c.post("/actions/submit_job", data={"source": " "}, headers=headers)
        assert r.status_code == 400 and "choose a job folder" in r.json()["message"]


def test_the_event_stream_starts_with_a_snapshot(tmp_path: Path) -> None:
    with client(FakeSession(), tmp_path) as c:
        logged_in(c)
        assert c.get("/events?topic=nonsense").status_code == 400
        with c.stream("GET", "/events?topic=jobs") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = r.iter_lines()
            for line in lines:
                if line == "event: snapshot":
                    break
            message = json.loads(next(lines).removeprefix("data: "))
    assert message["topic"] == "jobs"
    assert [j["job_id"] for j in message["data"]["jobs"]] == [JOB["job_id"]]


def test_the_hub_pushes_what_changed_only() -> None:
    session = FakeSession()

    async def scenario() -> list[tuple[str, object]]:
        hub = Hub(session, poll_s=0.01)
        sub = hub.subscribe(frozenset({"jobs"}))
        task = asyncio.create_task(hub.run())
        got = [await sub.queue.get()]
        session.answers["list_jobs"] = [{**JOB, "status": "FINISHED:COMPLETED"}]
        got.append(await sub.queue.get())
        session.raises["list_jobs"] = ConfigError("server said no")
        got.append(await sub.queue.get())
        task.cancel()
        return got

    snapshot, patch, failed = asyncio.run(scenario())
    assert snapshot[0] == "snapshot"
    assert patch == (
        "patch",
        {"topic": "jobs", "patch": {"set": {"jobs": [{**JOB, "status": "FINISHED:COMPLETED"}]}}},
    )
    # An error keeps the last data and says why.
    assert failed == (
        "patch",
        {"topic": "jobs", "patch": {"set": {"error": "ConfigError: server said no"}}},
    )


def test_listening_beyond_loopback_needs_the_flag(tmp_path: Path) -> None:
    assert check_bind(DashboardConfig(kit=tmp_path)) is None
    assert check_bind(DashboardConfig(kit=tmp_path, host="::1")) is None
    with pytest.raises(ConfigError, match="--allow-remote"):
        check_bind(DashboardConfig(kit=tmp_path, host="0.0.0.0"))
    warning = check_bind(DashboardConfig(kit=tmp_path, host="0.0.0.0", allow_remote=True))
    assert warning is not None and warning.startswith("WARNING")


def test_cookie_name_is_the_guards(tmp_path: Path) -> None:
    with client(FakeSession(), tmp_path) as c:
        logged_in(c)
        assert COOKIE in c.cookies
