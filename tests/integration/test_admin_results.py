"""Typed admin answers against a real server: every reply it sends decodes, and
``shoal admin --json`` prints each one byte for byte as the server sent it.

Real daemons from real kits (the POC fixtures), mutual TLS on 127.0.0.1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shoal import jobstatus
from shoal.admin.results import FederationStatus, JobMeta, JobStats, JobSummary, SysInfo
from shoal.cli.app import main

from .conftest import Federation
from .test_jobs import JOB_TIMEOUT, numpy_job

pytestmark = [
    pytest.mark.filterwarnings(r"ignore:subprocess \d+ is still running:ResourceWarning"),
]


def _cli_json(fed: Federation, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    kit = fed.layout.admin_kit
    code = main(["admin", "--kit", str(kit), "--server", fed.layout.admin_address, "--json", *argv])
    assert code == 0
    return capsys.readouterr().out


def _printed(command: str, reply: Any) -> str:
    """What ``--json`` printed before typed answers: the reply as the result."""
    return (
        json.dumps({"command": command, "ok": True, "result": reply}, indent=2, default=str) + "\n"
    )


def test_real_replies_decode_and_print_unchanged(
    federation: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = federation.admin()
    job_id = s.submit_job(numpy_job(tmp_path, name="typed", rounds=2))
    meta = s.wait_for_job(job_id, timeout=JOB_TIMEOUT)
    assert isinstance(meta, JobMeta)
    assert meta.status == jobstatus.COMPLETED and meta.num_rounds == 2
    assert "models/global_final.safetensors" in meta.results

    status = s.check_status()
    assert isinstance(status, FederationStatus)
    assert status.server.name == "server1" and status.server.ports
    assert {site.name for site in status.connected} == {"site-1", "site-2"}
    (job,) = s.list_jobs()
    assert isinstance(job, JobSummary) and job.job_id == job_id
    stats = s.show_stats(job_id)
    assert isinstance(stats, JobStats)
    assert [row["round"] for row in stats.metrics] == [1, 2]
    assert not s.show_errors(job_id).by_target
    for target in ("server", "site-1"):
        info = s.sys_info(target)
        assert isinstance(info, SysInfo) and info.target == target and info.cpus

    # A finished job's answers do not change between calls: what the server
    # sends is what --json prints.
    raw = s._call  # the undecoded reply, as the session receives it
    cases = [
        (["list_jobs"], "list_jobs", raw("list_jobs", name=None, status=None, limit=None)),
        (["list_jobs", "-d", job_id], "list_jobs", raw("get_job_meta", job_id=job_id)),
        (["show_stats", job_id], "show_stats", raw("show_stats", job_id=job_id)),
        (["show_errors", job_id], "show_errors", raw("show_errors", job_id=job_id)),
        (["sys_info", "server"], "sys_info", raw("sys_info", target="server")),
        (["wait", job_id], "wait", raw("get_job_meta", job_id=job_id)),
    ]
    for argv, command, reply in cases:
        assert _cli_json(federation, capsys, *argv) == _printed(command, reply), argv
    # check_status holds clocks (uptime, heartbeats): the same fields in the same order.
    printed = json.loads(_cli_json(federation, capsys, "check_status"))["result"]
    reply = raw("check_status")
    assert list(printed) == list(reply) and list(printed["server"]) == list(reply["server"])
    assert [list(site) for site in printed["sites"]] == [list(site) for site in reply["sites"]]
