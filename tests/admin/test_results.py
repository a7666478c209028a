"""Typed admin answers: decoded from the server's JSON at the session's edge,
round-tripped exactly for ``--json``, with errors naming a missing field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from admin.test_format import MATRIX
from shoal._proto import shoal_pb2 as pb
from shoal.admin import CrossSiteEval
from shoal.admin import format as fmt
from shoal.admin.results import (
    FederationStatus,
    JobErrors,
    JobMeta,
    JobStats,
    JobSummary,
    SiteProgress,
    SysInfo,
    jobs_from_json,
)
from shoal.admin.session import AdminSession
from shoal.cli import admin as cli_admin
from shoal.cli.app import main
from shoal.errors import TransportError
from shoal.jobs.signature import sign_job
from shoal.provision.pki import CertificateAuthority, TLSMaterial
from shoal.provision.project import Participant

# Replies shaped as the server builds them (server/daemon.py status(),
# store.JobRecord.summary(), admin_service.py), each with a field this client
# does not know, to show that it survives.
JOB = {
    "job_id": "c8973f05-8787-41c5-8568-ecc15c7683b2",
    "name": "hello-numpy",
    "status": "FINISHED:COMPLETED",
    "submit_time": "2024-05-23T09:47:04.488652+00:00",
    "start_time": "2024-05-23T09:47:05.000000+00:00",
    "end_time": "2024-05-23T09:48:49.335456+00:00",
    "run_duration_s": 104.335456,
    "submitter": "admin@nvidia.com",
    "submitter_org": "nvidia",
    "sites": ["site-1", "site-2"],
    "current_round": 5,
    "num_rounds": 5,
    "error": None,
    "attempts": 1,
    "added_later": {"x": 1},
}
RUNNING_JOB = {**JOB, "job_id": "d00d", "status": "RUNNING", "end_time": None, "current_round": 2}
#: The project CA and admin key of these replies: a job's signature is real,
#: so clone_job (which checks the source job's signature) accepts it.
CA = CertificateAuthority.create("example_project")
_ISSUED = CA.issue(
    Participant(name="admin@nvidia.com", type="admin", org="nvidia", role="project_admin"),
    validity_days=5,
)
ADMIN_TLS = TLSMaterial(ca_pem=CA.cert_pem, cert_pem=_ISSUED.cert_pem, key_pem=_ISSUED.key_pem)
PACKAGE_SHA256 = "9f" * 32
META = {
    **JOB,
    "spec": {"min_clients": 2, "deploy_map": {"app": ["@ALL"]}},
    "package_sha256": PACKAGE_SHA256,
    "signature": sign_job(
        job_id=JOB["job_id"], archive_sha256=PACKAGE_SHA256, tls=ADMIN_TLS
    ).to_json(),
    "results": ["models/global_final.safetensors"],
}
STATUS = {
    "server": {
        "name": "server1",
        "project": "example_project",
        "status": "started",
        "start_time": "2024-05-23T09:00:00+00:00",
        "uptime_s": 3723,
        "running_jobs": ["d00d"],
        "ports": {"fed": 8002, "admin": 8003, "health": 8004},
        "version": "0.1.0",
    },
    "sites": [
        {
            "name": "site-1",
            "org": "nvidia",
            "connected": True,
            "address": "ipv4:127.0.0.1:50312",
            "last_heartbeat_s_ago": 1.25,
            "connected_since": "2024-05-23T09:00:01+00:00",
            "running_jobs": ["d00d"],
        },
        {
            "name": "site-2",
            "org": "",
            "connected": False,
            "address": None,
            "last_heartbeat_s_ago": None,
            "connected_since": None,
            "running_jobs": [],
        },
    ],
    "added_later": True,
}
STATS = {
    "job_id": "d00d",
    "status": "RUNNING",
    "current_round": 2,
    "num_rounds": 5,
    "sites": {
        "site-1": {"state": "result received", "round": 2, "metrics": {"loss": 0.1873}},
        "site-2": {"state": "task offered", "round": 2},
    },
    "progress": {"round": 2},
    "metrics": [{"round": 1, "server": {"accuracy": 0.9282}, "num_examples": 16}],
}
ERRORS = {"job": ["site-1 failed in round 2"], "site-1": ["ValueError: exploded"]}
SYS_INFO = {
    "target": "site-1",
    "platform": "Linux-6.1-x86_64",
    "python": "3.11.7",
    "shoal": "0.1.0",
    "cpus": 2,
    "pid": 4242,
    "memory_gb": 23.4,
    "resources": {"gpus": 0},
}


def test_status_decodes_to_attributes() -> None:
    status = FederationStatus.from_json(copy.deepcopy(STATUS))
    assert status.server.name == "server1"
    assert status.server.uptime_s == 3723.0 and isinstance(status.server.uptime_s, float)
    assert status.server.running_jobs == ("d00d",)
    assert status.server.ports["admin"] == 8003
    assert [s.name for s in status.sites] == ["site-1", "site-2"]
    assert [s.name for s in status.connected] == ["site-1"]
    assert status.sites[1].last_heartbeat_s_ago is None and status.sites[1].address is None


def test_jobs_meta_stats_errors_and_sys_info_decode_to_attributes() -> None:
    (job,) = jobs_from_json([copy.deepcopy(JOB)])
    assert (job.job_id, job.status, job.sites, job.attempts) == (
        JOB["job_id"],
        "FINISHED:COMPLETED",
        ("site-1", "site-2"),
        1,
    )
    meta = JobMeta.from_json(copy.deepcopy(META))
    assert isinstance(meta, JobSummary)
    assert meta.results == ("models/global_final.safetensors",)
    assert meta.spec["min_clients"] == 2 and meta.error is None
    stats = JobStats.from_json(copy.deepcopy(STATS))
    assert stats.sites["site-1"] == SiteProgress(
        state="result received", round=2, metrics={"loss": 0.1873}
    )
    assert stats.sites["site-2"].metrics == {}
    assert stats.metrics[-1]["server"]["accuracy"] == 0.9282
    errors = JobErrors.from_json(copy.deepcopy(ERRORS))
    assert errors.by_target["site-1"] == ("ValueError: exploded",)
    info = SysInfo.from_json(copy.deepcopy(SYS_INFO))
    assert (info.target, info.cpus, info.memory_gb, info.resources) == (
        "site-1",
        2,
        23.4,
        {"gpus": 0},
    )


@pytest.mark.parametrize(
    ("decode", "reply"),
    [
        (FederationStatus.from_json, STATUS),
        (jobs_from_json, [JOB, RUNNING_JOB]),
        (JobMeta.from_json, META),
        (JobStats.from_json, STATS),
        (JobErrors.from_json, ERRORS),
        (JobErrors.from_json, {}),
        (SysInfo.from_json, SYS_INFO),
    ],
)
def test_to_dict_gives_back_the_reply_exactly(decode: Any, reply: Any) -> None:
    decoded = decode(json.loads(json.dumps(reply)))
    back = [j.to_dict() for j in decoded] if isinstance(decoded, list) else decoded.to_dict()
    assert json.dumps(back) == json.dumps(reply)  # keys, order, unknown fields, ints
    # A copy: changing it does not change the value.
    if isinstance(back, dict) and back:
        back[next(iter(back))] = "changed"
        assert decoded.to_dict() == reply


@pytest.mark.parametrize(
    ("decode", "reply", "message"),
    [
        (
            FederationStatus.from_json,
            {**STATUS, "sites": [STATUS["sites"][0], {"connected": False}]},
            "check_status reply: field 'sites[1].name' is missing",
        ),
        (
            FederationStatus.from_json,
            {"sites": []},
            "check_status reply: field 'server' is missing",
        ),
        (
            FederationStatus.from_json,
            {**STATUS, "server": {**STATUS["server"], "uptime_s": "long"}},
            "check_status reply: field 'server.uptime_s' is a string, expected a number",
        ),
        (
            jobs_from_json,
            [JOB, {k: v for k, v in JOB.items() if k != "status"}],
            "list_jobs reply: field '[1].status' is missing",
        ),
        (jobs_from_json, {"jobs": []}, "list_jobs reply: expected a list, got an object"),
        (
            JobMeta.from_json,
            {**META, "job_id": None},
            "get_job_meta reply: field 'job_id' is null, expected a string",
        ),
        (
            JobMeta.from_json,
            {**META, "results": "models/x"},
            "get_job_meta reply: field 'results' is a string, expected a list of strings",
        ),
        (
            JobMeta.from_json,
            {**META, "current_round": True},
            "get_job_meta reply: field 'current_round' is true or false, expected an integer",
        ),
        (
            JobStats.from_json,
            {**STATS, "sites": {"site-1": {"round": 2}}},
            "show_stats reply: field 'sites.site-1.state' is missing",
        ),
        (
            JobErrors.from_json,
            {"site-1": "not a list"},
            "show_errors reply: field 'site-1' is a string, expected a list of strings",
        ),
        (SysInfo.from_json, {"cpus": 2}, "sys_info reply: field 'target' is missing"),
        (SysInfo.from_json, None, "sys_info reply: expected an object, got null"),
        (
            FederationStatus.from_json,
            {**STATUS, "sites": [["site-1"]]},
            "check_status reply: field 'sites[0]' is a list, expected an object",
        ),
    ],
)
def test_a_reply_lacking_a_field_names_it(decode: Any, reply: Any, message: str) -> None:
    with pytest.raises(TransportError) as info:
        decode(reply)
    assert str(info.value) == message


def test_optional_fields_may_be_absent() -> None:
    job = JobSummary.from_json({"job_id": "j1", "name": "n", "status": "SUBMITTED"})
    assert job.run_duration_s is None and job.sites == () and job.attempts is None
    assert job.to_dict() == {"job_id": "j1", "name": "n", "status": "SUBMITTED"}


def test_only_sites_keeps_the_server_order_and_the_rest_of_the_reply() -> None:
    status = FederationStatus.from_json(copy.deepcopy(STATUS))
    only = status.only_sites({"site-2"})
    assert [s.name for s in only.sites] == ["site-2"]
    assert only.server == status.server
    assert only.to_dict() == {**STATUS, "sites": [STATUS["sites"][1]]}
    assert list(only.to_dict()) == list(STATUS)  # "sites" keeps its place


def test_the_mapping_view_reads_the_reply() -> None:
    """The transition aid: code written against dict answers keeps working."""
    meta = JobMeta.from_json(copy.deepcopy(META))
    assert meta["status"] == meta.status
    assert meta.get("added_later") == {"x": 1} and meta.get("nope", 7) == 7
    assert "spec" in meta and "nope" not in meta
    assert dict(meta.items()) == META and list(meta) == list(META) and len(meta) == len(META)
    assert not JobErrors.from_json({}) and JobErrors.from_json(ERRORS)


def test_values_built_in_code_give_their_fields_as_json() -> None:
    job = JobSummary(job_id="j1", name="n", status="RUNNING", sites=("a",))
    assert job.to_dict()["sites"] == ["a"] and job["status"] == "RUNNING"
    assert JobErrors(by_target={"job": ("boom",)}).to_dict() == {"job": ["boom"]}


def test_the_formatter_renders_typed_answers_as_their_replies() -> None:
    status = FederationStatus.from_json(copy.deepcopy(STATUS))
    assert fmt.format_status(status) == fmt.format_status(STATUS)
    jobs = jobs_from_json(copy.deepcopy([JOB, RUNNING_JOB]))
    assert fmt.format_jobs(jobs) == fmt.format_jobs([JOB, RUNNING_JOB])
    meta = JobMeta.from_json(copy.deepcopy(META))
    assert fmt.format_job_detail(meta) == fmt.format_job_detail(META)
    assert fmt.format_stats(JobStats.from_json(copy.deepcopy(STATS))) == fmt.format_stats(STATS)
    assert fmt.format_errors(JobErrors.from_json(copy.deepcopy(ERRORS))) == fmt.format_errors(
        ERRORS
    )
    assert fmt.format_details(SysInfo.from_json(copy.deepcopy(SYS_INFO))) == fmt.format_details(
        SYS_INFO
    )


# --- through the real session's edge: --json prints what the server sent -------------


class _Stub:
    """The Admin service's ``Call``, answering with fixed JSON per command."""

    def __init__(self, replies: dict[str, Any]) -> None:
        self.replies = replies

    def Call(self, request: pb.AdminRequest, timeout: float) -> pb.AdminReply:  # noqa: N802
        return pb.AdminReply(result_json=json.dumps(self.replies[request.command]))


class _Channel:
    def close(self) -> None:
        pass


def _offline_session(replies: dict[str, Any]) -> AdminSession:
    """A real AdminSession whose channel is a stub: the decoding is the real one."""
    session = AdminSession.__new__(AdminSession)
    session._stub = _Stub(replies)  # type: ignore[assignment]
    session._channel = _Channel()  # type: ignore[assignment]
    session.timeout = 5.0
    session.kit = SimpleNamespace(tls=ADMIN_TLS)  # type: ignore[assignment]  # what signs
    return session


REPLIES = {
    "check_status": STATUS,
    "sys_info": SYS_INFO,
    "list_jobs": [JOB, RUNNING_JOB],
    "get_job_meta": META,
    "show_stats": STATS,
    "show_errors": ERRORS,
    "get_log": {"job_id": JOB["job_id"], "target": "site-1", "log": "round 1 done\n"},
    "clone_job": {"job_id": "new-job"},
}

# (command line, what --json printed before typed answers: the reply itself)
JSON_CASES = [
    (["check_status"], True, STATUS),
    (["check_status", "client", "site-1"], True, {**STATUS, "sites": [STATUS["sites"][0]]}),
    (["sys_info", "site-1"], True, SYS_INFO),
    (["list_jobs"], True, [JOB, RUNNING_JOB]),
    (["list_jobs", "-d", "c897"], True, META),
    (["show_stats", "d00d"], True, STATS),
    (["show_errors", "c897"], True, ERRORS),
    (["wait", "c897"], True, META),
    (
        ["cat_log", "c897", "site-1"],
        True,
        {"job_id": "c897", "target": "site-1", "log": "round 1 done\n"},
    ),
    (["clone_job", "c897"], True, {"job_id": "new-job", "source_job_id": "c897"}),
]


@pytest.fixture
def kit(tmp_path: Path) -> Path:
    (tmp_path / "startup").mkdir()
    (tmp_path / "startup" / "fed_admin.json").write_text(json.dumps({"name": "admin@nvidia.com"}))
    return tmp_path


def _run_json(
    kit: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
    replies: dict[str, Any],
    argv: list[str],
) -> tuple[int, str]:
    monkeypatch.setattr(cli_admin, "_open_session", lambda kit, **_: _offline_session(replies))
    code = main(["admin", "--kit", str(kit), "--json", *argv])
    return code, capsys.readouterr().out


@pytest.mark.parametrize(("argv", "ok", "result"), JSON_CASES)
def test_json_output_is_byte_for_byte_the_reply(
    kit: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    ok: bool,
    result: Any,
) -> None:
    code, out = _run_json(kit, monkeypatch, capsys, REPLIES, argv)
    expected = {"command": argv[0], "ok": ok, "result": result}
    assert code == 0
    assert out == json.dumps(expected, indent=2, default=str) + "\n"


def test_json_of_a_wait_that_timed_out_is_the_reply_and_a_flag(
    kit: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    running = {**META, "status": "RUNNING"}
    code, out = _run_json(
        kit, monkeypatch, capsys, {"get_job_meta": running}, ["wait", "c897", "--timeout", "0"]
    )
    expected = {"command": "wait", "ok": False, "result": {**running, "timed_out": True}}
    assert code == 1
    assert out == json.dumps(expected, indent=2, default=str) + "\n"


def test_a_malformed_reply_is_a_connection_error_naming_the_field(
    kit: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = {"check_status": {"server": {"name": "server1"}, "sites": []}}
    code, out = _run_json(kit, monkeypatch, capsys, bad, ["check_status"])
    assert code == 1
    assert json.loads(out)["error"]["message"] == (
        "check_status reply: field 'server.status' is missing"
    )


def test_the_demo_follows_a_job_from_its_typed_stats() -> None:
    from shoal.demo import _progress_line

    line = _progress_line(JobStats.from_json(copy.deepcopy(STATS)))
    assert line == (
        "   RUNNING              round 2 of 5 [#####-------------------]  20%"
        "  accuracy 0.9282  site-1: result received, site-2: task offered"
    )


def test_stats_decode_the_cross_site_matrix() -> None:
    stats = JobStats.from_json({**copy.deepcopy(STATS), "cross_site_eval": copy.deepcopy(MATRIX)})
    matrix = stats.cross_site_eval
    assert isinstance(matrix, CrossSiteEval)
    assert matrix.models == ("global", "site-1", "site-2") and matrix.global_model == "final"
    assert matrix.metrics("site-2", "site-1") == {"loss": 2.0}
    assert matrix.metrics("site-1", "site-2") is None
    assert matrix.metric_names() == ["loss", "acc"]
    assert matrix.not_submitted == {"site-3": MATRIX["not_submitted"]["site-3"]}
    assert matrix.to_dict() == MATRIX
    assert JobStats.from_json(copy.deepcopy(STATS)).cross_site_eval is None
    with pytest.raises(TransportError, match="'cross_site_eval.models' is an object"):
        JobStats.from_json({**copy.deepcopy(STATS), "cross_site_eval": {"models": {}}})


def test_job_detail_names_the_signer_not_the_signature() -> None:
    text = fmt.format_job_detail(JobMeta.from_json(copy.deepcopy(META)))
    assert "signed_by:" in text and "admin@nvidia.com at 20" in text
    assert "BEGIN CERTIFICATE" not in text
    unsigned = fmt.format_job_detail({**META, "signature": None})
    assert "not signed (sites refuse it)" in unsigned
