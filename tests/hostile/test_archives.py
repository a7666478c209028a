"""Hostile job archives submitted through the real admin API to a real
server: each is refused with a clear error and nothing is stored."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import grpc  # noqa: I001
import pytest

from shoal._proto import shoal_pb2 as pb
from shoal.errors import IntegrityError, JobValidationError
from shoal.jobs.archive import MAX_ARCHIVE_BYTES
from shoal.transport import PayloadHeader, from_rpc_error

from .conftest import admin_stub, kit_tls

pytestmark = pytest.mark.slow

JOB_YML = b"""name: evil
min_clients: 1
workflow: {name: fedavg, num_rounds: 1}
client: {script: train.py}
server: {initial_weights: "model:initial_weights"}
"""


def _zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            z.writestr(name, data)
    return path


def _symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


APP = [
    ("evil/app/train.py", b"print('hi')\n"),
    ("evil/app/model.py", b"def initial_weights(): ...\n"),
]
BASE = [("evil/job.yml", JOB_YML), *APP]
CASES = {
    "dotdot": (BASE + [("evil/../../escape.py", b"x")], "'..'"),
    "absolute": (BASE + [("/etc/shoal-escape.py", b"x")], "absolute"),
    "symlink": (BASE + [_symlink("evil/app/link.py", "/etc/passwd")], "link"),
    "zip_bomb": (BASE + [("evil/app/data.bin", b"\0" * (64 * 1024 * 1024))], "ratio"),
    "not_yaml": ([("evil/job.yml", b"name: [unclosed\n"), *APP], "job.yml"),
    "bad_field": (
        [("evil/job.yml", JOB_YML.replace(b"min_clients: 1", b"min_clients: lots")), *APP],
        "min_clients",
    ),  # fmt: skip
    "no_job_yml": (APP, "job.yml"),
    "unknown_site": ([("evil/job.yml", JOB_YML + b"sites: [site-9]\n"), *APP], "site-9"),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):  # type: ignore[no-untyped-def]
    from faults.harness import Fed

    fed = Fed(tmp_path_factory.mktemp("archives"))
    fed.start_server()
    try:
        yield fed
    finally:
        fed.close()


def _stored(fed) -> list[str]:  # type: ignore[no-untyped-def]
    jobs = fed.workspace / "jobs"
    return sorted(p.name for p in jobs.iterdir()) if jobs.exists() else []


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_archive_refused_and_nothing_stored(server, tmp_path: Path, case: str):
    entries, reason = CASES[case]
    archive = _zip(tmp_path / f"{case}.zip", entries)
    admin = server.admin()
    with pytest.raises(JobValidationError) as info:
        admin.submit_job(archive)
    assert reason in str(info.value), str(info.value)
    assert admin.list_jobs() == []
    assert _stored(server) == []
    assert not Path("/etc/shoal-escape.py").exists()


def test_oversize_archive_refused_before_it_is_received(server):
    stub = admin_stub(server, kit_tls(server.kits["admin@nvidia.com"]))
    header = PayloadHeader("job", size=MAX_ARCHIVE_BYTES + 1)

    def frames():  # type: ignore[no-untyped-def]
        yield pb.Frame(header=header.to_pb())
        yield pb.Frame(data=b"PK" + b"\0" * 1024)

    with pytest.raises(grpc.RpcError) as info:
        stub.Submit(frames(), timeout=60)
    err = from_rpc_error(info.value, "submit")
    assert isinstance(err, (JobValidationError, IntegrityError)), err
    assert "limit" in str(err), err
    assert server.admin().list_jobs() == []
    assert _stored(server) == []
