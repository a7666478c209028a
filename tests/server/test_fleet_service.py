"""The Fleet service without a daemon: its parts are a real job store, site
registry and running-jobs table, a fake ``identify`` and a fake context."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from shoal._proto import shoal_pb2 as pb
from shoal.provision import Identity, identity_from_cert
from shoal.provision.jobcreds import JobCredentialAuthority, new_worker_key
from shoal.server.fleet import FleetParts, FleetService
from shoal.server.jobrun import JobRun
from shoal.server.runs import Runs
from shoal.server.sessions import SiteRegistry
from shoal.server.store import JobStore
from shoal.transport.frames import read_header

from .fakes import Aborted, FakeAioContext, identify_aio_as, site


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    s = JobStore(tmp_path / "ws")
    yield s
    s.close()


@pytest.fixture
def authority(tmp_path: Path) -> JobCredentialAuthority:
    return JobCredentialAuthority.load_or_create(tmp_path / "jobca", "server1")


def running_job(store: JobStore, runs: Runs, sites: list[str]) -> JobRun:
    staging = store.staging_folder()
    (staging / "job.zip").write_bytes(b"the job package")
    (staging / "job").mkdir()
    rec = store.create(
        name="hello",
        spec={},
        staged_folder=staging,
        submitter="admin@a",
        submitter_org="a",
        package_sha256="0" * 64,
        package_size=15,
        num_rounds=1,
    )
    run = JobRun(store.update(rec.job_id, sites=sites), sites=sites, on_end=lambda *a: None)
    runs.add(run)
    return run


def fleet(
    store: JobStore, runs: Runs, authority: JobCredentialAuthority, who: Identity
) -> FleetService:
    parts = FleetParts(
        identify=identify_aio_as(who),
        registry=SiteRegistry(heartbeat_timeout_s=30),
        runs=runs,
        store=store,
        job_credentials=authority,
        server_name="server1",
        heartbeat_interval_s=10.0,
    )
    return FleetService(parts, max_transfers=4)


def fetch(service: FleetService, job_id: str, public_key: bytes = b"") -> FakeAioContext:
    context = FakeAioContext()
    request = pb.FetchJobRequest(job_id=job_id, worker_public_key=public_key)
    asyncio.run(service.FetchJob(request, context))  # type: ignore[arg-type]
    return context


def test_fetch_job_is_refused_to_a_site_not_in_the_job(
    store: JobStore, authority: JobCredentialAuthority
) -> None:
    runs = Runs()
    run = running_job(store, runs, ["site-1", "site-2"])
    service = fleet(store, runs, authority, site("site-3"))
    with pytest.raises(Aborted) as info:
        fetch(service, run.job_id)
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details == f"site-3 is not a site of job {run.job_id}"


def test_fetch_job_of_a_job_not_running_is_not_found(
    store: JobStore, authority: JobCredentialAuthority
) -> None:
    service = fleet(store, Runs(), authority, site("site-1"))
    with pytest.raises(Aborted) as info:
        fetch(service, "job-x")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert info.value.details == "job job-x is not running"


def test_fetch_job_sends_the_package_and_a_worker_credential_for_this_job(
    store: JobStore, authority: JobCredentialAuthority
) -> None:
    runs = Runs()
    run = running_job(store, runs, ["site-1", "site-2"])
    _, public = new_worker_key()
    context = fetch(fleet(store, runs, authority, site("site-2")), run.job_id, public)
    header = read_header(iter(context.written))
    assert header.kind == "job" and header.job_id == run.job_id
    assert {k: header.meta[k] for k in ("sites", "site_index", "num_sites")} == {
        "sites": ["site-1", "site-2"],
        "site_index": 1,
        "num_sites": 2,
    }
    cert = header.meta["worker_cert"].encode("ascii")
    assert authority.issued(cert)
    worker = identity_from_cert(cert)
    assert (worker.type, worker.name, worker.job_id) == ("worker", "site-2", run.job_id)


def test_a_heartbeat_for_an_unknown_session_asks_the_site_to_connect_again(
    store: JobStore, authority: JobCredentialAuthority
) -> None:
    service = fleet(store, Runs(), authority, site("site-1"))
    with pytest.raises(Aborted) as info:
        asyncio.run(service.Beat(pb.Heartbeat(session_id="s"), FakeAioContext()))  # type: ignore[arg-type]
    assert (info.value.code, info.value.details) == (
        grpc.StatusCode.NOT_FOUND,
        "no such session; connect again",
    )
