"""Hostile job input (issue 16, findings 3, 4, 7, 11) sent through the real
admin API to a real server started from a real kit: each is refused with a
reason naming the problem, nothing is stored, and the server still answers.

- 3: a "billion laughs" job.yml (YAML aliases) and oversized fields;
- 4: a zip of many small, highly compressed entries (1,900 MiB of zeros in
  about 2 MB), and a per-submitter quota of stored job bytes;
- 7: numbers too big for SQLite (``num_rounds: 10**24``);
- 11: worker environment variables that hook the loader or the interpreter.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.errors import ConfigError, JobValidationError
from shoal.jobs.archive import MAX_TOTAL_BYTES, safe_extract
from shoal.provision.project import load_project
from shoal.server.store import JobStore

pytestmark = pytest.mark.slow

ADMIN = "admin@nvidia.com"
ALICE = "alice@nvidia.com"
BOB = "bob@nvidia.com"
#: The server's quota of stored job bytes per submitter in this module.
QUOTA = 5_000_000

JOB_YML = """name: evil
min_clients: 1
workflow: {name: fedavg, num_rounds: 1}
client: {script: train.py}
server: {initial_weights: "model:initial_weights"}
"""
APP = {
    "evil/app/train.py": b"print('hi')\n",
    "evil/app/model.py": b"def initial_weights(): ...\n",
}


# -- archives ---------------------------------------------------------------------


def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def raw_zip(path: Path, entries: list[tuple[str, bytes, int, int]]) -> Path:
    """A zip written byte by byte from (name, deflated data, crc, size) entries,
    so a bomb of thousands of identical entries compresses its data only once."""
    central = b""
    with open(path, "wb") as f:
        for name, data, crc, size in entries:
            offset = f.tell()
            encoded = name.encode()
            header = (crc, len(data), size, len(encoded), 0)
            f.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0x21, *header))
            f.write(encoded + data)
            central += struct.pack(
                "<4s6H3L5H2L",
                *(b"PK\x01\x02", 20, 20, 0, 8, 0, 0x21, crc, len(data), size, len(encoded)),
                *(0, 0, 0, 0, 0o644 << 16, offset),
            )
            central += encoded
        start = f.tell()
        f.write(central)
        n = len(entries)
        f.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n, n, len(central), start, 0))
    return path


def job_zip(path: Path, job_yml: str = JOB_YML, extra: dict[str, bytes] | None = None) -> Path:
    files = {"evil/job.yml": job_yml.encode(), **APP, **(extra or {})}
    return raw_zip(path, [(n, _deflate(d), zlib.crc32(d), len(d)) for n, d in files.items()])


def zeros_bomb(path: Path, entries: int, job_yml: str = JOB_YML) -> Path:
    """A valid job plus ``entries`` entries of 1 MiB of zeros (about 1 KB each)."""
    mib = b"\0" * 2**20
    one = (_deflate(mib), zlib.crc32(mib), len(mib))
    files = {"evil/job.yml": job_yml.encode(), **APP}
    head = [(n, _deflate(d), zlib.crc32(d), len(d)) for n, d in files.items()]
    return raw_zip(path, head + [(f"evil/app/z{i:04d}", *one) for i in range(entries)])


# -- the server ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from faults.harness import Fed

    fed = Fed(
        tmp_path_factory.mktemp("job-input"),
        admins=(
            (ADMIN, "nvidia", "project_admin"),
            (ALICE, "nvidia", "lead"),
            (BOB, "nvidia", "lead"),
        ),
    )
    fed.env["SHOAL_SUBMITTER_QUOTA_BYTES"] = str(QUOTA)
    fed.start_server()
    try:
        yield fed
    finally:
        fed.close()


def _stored(fed) -> list[str]:  # type: ignore[no-untyped-def]
    jobs = fed.workspace / "jobs"
    return sorted(p.name for p in jobs.iterdir()) if jobs.exists() else []


def _refused(fed, archive: Path, who: str = ADMIN) -> str:  # type: ignore[no-untyped-def]
    """Submit ``archive``; assert it is refused, nothing is stored and the
    server still answers; the refusal's reason."""
    admin = fed.admin(who)
    jobs_before = admin.list_jobs()
    stored_before = _stored(fed)
    with pytest.raises(JobValidationError) as info:
        admin.submit_job(archive)
    assert admin.list_jobs() == jobs_before
    assert _stored(fed) == stored_before
    assert admin.check_status()["server"], "the server stopped answering"
    return str(info.value)


# -- finding 3: YAML aliases, field sizes ----------------------------------------------

_LAUGHS = (
    'resources:\n  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    + "".join(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 8))
)


def test_billion_laughs_job_yml_refused(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    archive = job_zip(tmp_path / "laughs.zip", JOB_YML + _LAUGHS)
    assert archive.stat().st_size < 4096
    reason = _refused(server, archive)
    assert "job.yml: line 7: YAML anchors and aliases are not allowed" in reason, reason


@pytest.mark.parametrize(
    ("extra_yml", "reason"),
    [
        ("resources: {a: {b: {c: {d: {e: 1}}}}}\n", "resources.a.b.c.d: nested deeper"),
        (
            "resources: {" + ", ".join(f"k{i}: {i}" for i in range(100)) + "}\n",
            "resources: more than 64 keys",
        ),
        ("resources: {blob: " + "x" * 20_000 + "}\n", "resources.blob: string of 20000"),
    ],
)
def test_oversized_fields_refused(server, tmp_path: Path, extra_yml: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    message = _refused(server, job_zip(tmp_path / "big.zip", JOB_YML + extra_yml))
    assert reason in message, message


def test_project_yml_aliases_are_bounded(tmp_path: Path) -> None:
    # project.yml is the operator's: aliases are allowed, but not a billion laughs.
    path = tmp_path / "project.yml"
    path.write_text(
        "api_version: 3\nname: p\nparticipants: []\n" + _LAUGHS.replace("resources", "x")
    )
    with pytest.raises(ConfigError, match="expands to more than 100000 values through its aliases"):
        load_project(path)


# -- finding 4: many small compressed entries, the quota -------------------------------


def test_small_entry_zip_bomb_refused_at_submit(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bomb = zeros_bomb(tmp_path / "bomb.zip", 1_900)
    assert bomb.stat().st_size < 3 * 2**20  # 1,900 MiB behind about 2 MB
    reason = _refused(server, bomb)
    assert f"more than {MAX_TOTAL_BYTES} bytes" in reason, reason


def test_bomb_under_the_total_cap_refused_by_the_overall_ratio(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bomb = zeros_bomb(tmp_path / "bomb.zip", 40)  # 40 MiB: under the cap, ratio ~1000
    reason = _refused(server, bomb)
    assert "overall compression ratio above 200" in reason, reason


def test_safe_extract_refuses_the_bomb_directly(tmp_path: Path) -> None:
    bomb = zeros_bomb(tmp_path / "bomb.zip", 1_900)
    with pytest.raises(JobValidationError, match=f"more than {MAX_TOTAL_BYTES} bytes"):
        safe_extract(bomb, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bomb.zip"]  # no temporary folder left


def test_quota_refuses_one_submitter_not_another(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    payload = {"evil/app/data.bin": os.urandom(2_000_000)}  # incompressible
    archive = job_zip(tmp_path / "job.zip", extra=payload)
    size = archive.stat().st_size
    stored = size + len(JOB_YML) + sum(len(d) for d in APP.values()) + 2_000_000
    assert stored <= QUOTA < stored + size

    alice = server.admin(ALICE)
    first = alice.submit_job(archive)
    reason = _refused(server, archive, ALICE)
    assert f"quota is {QUOTA} bytes" in reason, reason
    assert f"{stored} bytes are already used" in reason, reason
    assert f"job of {size} bytes" in reason, reason
    # A clone is stored again, so it counts too.
    with pytest.raises(JobValidationError, match="quota"):
        alice.clone_job(first)
    # Refused, but nothing Alice had is lost; Bob has his own quota.
    assert [j["job_id"] for j in alice.list_jobs()] == [first]
    assert (server.workspace / "jobs" / first / "job.zip").is_file()
    bob = server.admin(BOB)
    second = bob.submit_job(archive)
    # Leads see their own jobs only (finding 8): each list holds its own.
    assert [j["job_id"] for j in alice.list_jobs()] == [first]
    assert [j["job_id"] for j in bob.list_jobs()] == [second]


def test_store_checks_the_quota_on_unpacked_bytes_too(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "ws")
    kw = {
        "name": "j",
        "spec": {},
        "submitter": "eve",
        "submitter_org": "o",
        "package_sha256": "0" * 64,
        "package_size": 10,
        "num_rounds": 1,
    }

    def staged(n: int) -> Path:
        folder = store.staging_folder()
        (folder / "job.zip").write_bytes(b"z" * 10)
        (folder / "job").mkdir()
        (folder / "job" / "big").write_bytes(b"\0" * n)
        return folder

    kept = store.create(staged_folder=staged(500), quota_bytes=1000, **kw)  # type: ignore[arg-type]
    assert kept.stored_bytes == 510
    late = staged(600)  # a 10-byte archive that unpacks past the quota
    with pytest.raises(JobValidationError, match="quota is 1000 bytes"):
        store.create(staged_folder=late, quota_bytes=1000, **kw)  # type: ignore[arg-type]
    assert not late.exists()
    assert [r.job_id for r in store.list()] == [kept.job_id]
    assert store.submitter_bytes("eve") == 510
    assert store.submitter_bytes("someone else") == 0


# -- finding 7: numbers SQLite cannot hold ----------------------------------------------


def test_huge_num_rounds_refused_not_unknown(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    yml = JOB_YML.replace("num_rounds: 1", f"num_rounds: {10**24}")
    reason = _refused(server, job_zip(tmp_path / "rounds.zip", yml))
    assert "job.yml: workflow.num_rounds" in reason, reason


def test_store_never_overflows(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "ws")
    folder = store.staging_folder()
    kw = {
        "name": "j",
        "spec": {},
        "submitter": "eve",
        "submitter_org": "o",
        "package_sha256": "0" * 64,
        "package_size": 10,
    }
    with pytest.raises(JobValidationError, match="num_rounds"):
        store.create(staged_folder=folder, num_rounds=10**24, **kw)  # type: ignore[arg-type]
    rec = store.create(staged_folder=store.staging_folder(), num_rounds=3, **kw)  # type: ignore[arg-type]
    # Progress comes from the workflow process (job code): an absurd round is
    # stored as unknown, and the status recorded with it is not lost.
    rec = store.update(rec.job_id, status="FINISHED:COMPLETED", current_round=10**30)
    assert (rec.status, rec.current_round) == ("FINISHED:COMPLETED", None)


# -- finding 11: the worker's environment ------------------------------------------------


@pytest.mark.parametrize("name", ["LD_PRELOAD", "PYTHONPATH", "SHOAL_SERVER", "BASH_ENV"])
def test_loader_and_interpreter_variables_refused(server, tmp_path: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    yml = JOB_YML.replace(
        "client: {script: train.py}", f"client: {{script: train.py, env: {{{name}: /tmp/x}}}}"
    )
    reason = _refused(server, job_zip(tmp_path / "env.zip", yml))
    assert f"job.yml: client.env.{name}: {name} may not be set by a job" in reason, reason
