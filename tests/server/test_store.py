"""JobStore contract: create/get/find/list/update/delete, and crash safety.

Written against the store's public interface only, so that another
implementation can run the same tests by swapping the ``make_store`` fixture.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shoal import jobstatus
from shoal.errors import NotFoundError
from shoal.server.store import JobRecord, JobStore

MakeStore = Callable[[], JobStore]


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[MakeStore]:
    """Open (or reopen) the store in one workspace; every store is closed at the end."""
    opened: list[JobStore] = []

    def make() -> JobStore:
        store = JobStore(tmp_path / "ws")
        opened.append(store)
        return store

    yield make
    for store in opened:
        with contextlib.suppress(Exception):  # already closed by the test
            store.close()


@pytest.fixture
def store(make_store: MakeStore) -> JobStore:
    return make_store()


def submit(
    store: JobStore, name: str = "job", *, rounds: int | None = 3, who: str = "a@x"
) -> JobRecord:
    staged = store.staging_folder()
    (staged / "job.zip").write_bytes(b"PK fake")
    (staged / "job").mkdir()
    (staged / "job" / "job.yml").write_text(f"name: {name}\n")
    return store.create(
        name=name,
        spec={"name": name, "min_clients": 1, "workflow": {"name": "fedavg"}},
        staged_folder=staged,
        submitter=who,
        submitter_org="org-" + who.split("@")[-1],
        package_sha256="ab" * 32,
        package_size=7,
        num_rounds=rounds,
    )


@pytest.fixture
def fixed_ids(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make job ids predictable (and sharing prefixes) for prefix lookups."""
    ids = [
        "aaaa1111-0000-4000-8000-000000000001",
        "aaaa2222-0000-4000-8000-000000000002",
        "bbbb1111-0000-4000-8000-000000000003",
    ]
    queue = [uuid.UUID(i) for i in ids]
    real = uuid.uuid4

    def fake() -> uuid.UUID:
        # The staging folder's name is the job's id; other uuid4() calls get real ones.
        import inspect

        caller = inspect.stack()[1].function
        return queue.pop(0) if caller == "staging_folder" else real()

    monkeypatch.setattr(uuid, "uuid4", fake)
    return ids


# -- create / get --------------------------------------------------------------------


def test_create_adopts_the_staged_folder(store: JobStore) -> None:
    staged = store.staging_folder()
    assert staged.parent == store.jobs_dir
    assert store.list() == [], "a staging folder is no job until create() adds its row"
    (staged / "job.zip").write_bytes(b"zip")
    (staged / "job").mkdir()
    rec = store.create(
        name="hello",
        spec={"name": "hello", "min_clients": 2},
        staged_folder=staged,
        submitter="admin@x",
        submitter_org="x",
        package_sha256="00" * 32,
        package_size=3,
        num_rounds=5,
    )
    # Adopted where it is: no folder is renamed (a bucket mount refuses that).
    assert rec.folder == staged == store.jobs_dir / rec.job_id
    assert rec.package.read_bytes() == b"zip"
    assert rec.job_dir.is_dir()
    assert rec.run_dir == rec.folder / "run" and rec.logs_dir == rec.folder / "logs"
    assert rec.status == jobstatus.SUBMITTED
    assert (rec.name, rec.submitter, rec.submitter_org) == ("hello", "admin@x", "x")
    assert rec.spec == {"name": "hello", "min_clients": 2}
    assert list(rec.sites) == [] and rec.attempts == 0 and rec.num_rounds == 5
    assert rec.start_time is None and rec.end_time is None and rec.run_duration_s() is None
    assert store.get(rec.job_id) == rec
    summary = rec.summary()
    json.dumps(summary)
    assert summary["job_id"] == rec.job_id and summary["status"] == jobstatus.SUBMITTED


def test_get_unknown_job(store: JobStore) -> None:
    with pytest.raises(NotFoundError, match="no job with id nope"):
        store.get("nope")


def test_create_failure_leaves_no_folder(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    staged = store.staging_folder()

    def boom(*a: object, **k: object) -> None:
        raise RuntimeError("disk full")

    # Fails inside the transaction, after the staged folder was adopted.
    monkeypatch.setattr(json, "dumps", boom)
    with pytest.raises(RuntimeError):
        store.create(
            name="x",
            spec={},
            staged_folder=staged,
            submitter="a",
            submitter_org="o",
            package_sha256="",
            package_size=0,
            num_rounds=None,
        )
    monkeypatch.undo()
    assert list(store.jobs_dir.iterdir()) == []
    assert store.list() == []


# -- find by prefix ----------------------------------------------------------------


def test_find_by_id_and_unique_prefix(store: JobStore, fixed_ids: list[str]) -> None:
    a1, a2, b1 = (submit(store, f"j{i}").job_id for i in range(3))
    assert [a1, a2, b1] == fixed_ids
    assert store.find(a1).job_id == a1
    assert store.find("aaaa1").job_id == a1
    assert store.find("b").job_id == b1
    with pytest.raises(NotFoundError, match="ambiguous"):
        store.find("aaaa")
    with pytest.raises(NotFoundError, match="no job with id cccc"):
        store.find("cccc")
    with pytest.raises(NotFoundError, match="no job id given"):
        store.find("")


@pytest.mark.parametrize("pattern", ["%", "_", "____", "a_a", "%a", "aaaa%"])
def test_find_treats_like_wildcards_literally(
    store: JobStore, fixed_ids: list[str], pattern: str
) -> None:
    submit(store, "only")
    with pytest.raises(NotFoundError):
        store.find(pattern)


# -- list filters -------------------------------------------------------------------


def test_list_filters(store: JobStore) -> None:
    a = submit(store, "hello-tf2")
    b = submit(store, "hello-numpy")
    c = submit(store, "other")
    d = submit(store, "hello-tf2")
    store.update(a.job_id, status=jobstatus.COMPLETED)
    store.update(b.job_id, status=jobstatus.RUNNING)
    store.update(c.job_id, status=jobstatus.ABORTED)

    def ids(recs: list[JobRecord]) -> list[str]:
        return [r.job_id for r in recs]

    assert ids(store.list()) == [a.job_id, b.job_id, c.job_id, d.job_id]  # submission order
    assert ids(store.list(status=jobstatus.RUNNING)) == [b.job_id]
    assert ids(store.list(status="running")) == [b.job_id]
    assert ids(store.list(status="FINISHED")) == [a.job_id, c.job_id]
    assert ids(store.list(status=[jobstatus.SUBMITTED, jobstatus.RUNNING])) == [b.job_id, d.job_id]
    assert ids(store.list(name="hello")) == [a.job_id, b.job_id, d.job_id]
    assert ids(store.list(name="hello-tf2")) == [a.job_id, d.job_id]
    assert ids(store.list(name="hello", status="FINISHED")) == [a.job_id]
    assert ids(store.list(limit=2)) == [c.job_id, d.job_id]  # the newest, oldest first
    assert ids(store.list(name="hello", limit=1)) == [d.job_id]
    assert store.list(name="nothing") == []
    assert store.list(status=jobstatus.ABANDONED) == []


def test_list_name_filter_treats_wildcards_literally(store: JobStore) -> None:
    submit(store, "hello-tf2")
    submit(store, "a_b")
    assert [r.name for r in store.list(name="hello_tf2")] == []
    assert [r.name for r in store.list(name="%")] == []
    assert [r.name for r in store.list(name="a_")] == ["a_b"]


# -- update / delete -------------------------------------------------------------------


def test_update(store: JobStore) -> None:
    rec = submit(store)
    new = store.update(
        rec.job_id,
        status=jobstatus.RUNNING,
        sites=["site-1", "site-2"],
        start_time="2024-01-01T00:00:00+00:00",
        current_round=2,
        attempts=1,
    )
    assert new.status == jobstatus.RUNNING
    assert list(new.sites) == ["site-1", "site-2"]
    assert new.current_round == 2 and new.attempts == 1
    assert store.get(rec.job_id) == new
    done = store.update(
        rec.job_id,
        status=jobstatus.EXECUTION_EXCEPTION,
        end_time="2024-01-01T00:01:30+00:00",
        error="boom",
    )
    assert done.error == "boom" and done.run_duration_s() == 90.0
    assert store.update(rec.job_id, error=None).error is None


def test_update_refuses_unknown_fields_and_jobs(store: JobStore) -> None:
    rec = submit(store)
    with pytest.raises(ValueError, match="unknown job fields"):
        store.update(rec.job_id, name="renamed")
    with pytest.raises(ValueError, match="unknown job fields"):
        store.update(rec.job_id, **{"status = 'x'; --": 1})
    with pytest.raises(NotFoundError):
        store.update("nope", status=jobstatus.RUNNING)
    assert store.get(rec.job_id) == rec


def test_delete(store: JobStore) -> None:
    keep = submit(store, "keep")
    gone = submit(store, "gone")
    (gone.run_dir / "models").mkdir(parents=True)
    (gone.run_dir / "models" / "m.safetensors").write_bytes(b"x")
    store.delete(gone.job_id)
    assert not gone.folder.exists()
    assert [r.job_id for r in store.list()] == [keep.job_id]
    with pytest.raises(NotFoundError):
        store.get(gone.job_id)
    with pytest.raises(NotFoundError):
        store.delete(gone.job_id)
    assert keep.folder.is_dir()


# -- crash safety -------------------------------------------------------------------------


def test_rows_and_folders_survive_reopen(make_store: MakeStore) -> None:
    store = make_store()
    a = submit(store, "a")
    b = store.update(submit(store, "b").job_id, status=jobstatus.COMPLETED, current_round=3)
    store.close()

    again = make_store()
    assert again.list() == [a, b]
    assert again.get(b.job_id).status == jobstatus.COMPLETED
    assert again.get(b.job_id).folder.is_dir()
    # New jobs still come after the old ones.
    c = submit(again, "c")
    assert [r.job_id for r in again.list()] == [a.job_id, b.job_id, c.job_id]


def test_start_up_sweeps_orphan_folders(make_store: MakeStore) -> None:
    store = make_store()
    kept = submit(store, "kept")
    staged = store.staging_folder()  # a submit interrupted while receiving
    (staged / "job.zip").write_bytes(b"partial")
    orphan = store.jobs_dir / str(uuid.uuid4())  # a crash between a delete's row and rmtree
    (orphan / "run").mkdir(parents=True)
    stray_file = store.jobs_dir / "README"  # not a folder: not the store's to remove
    stray_file.write_text("hi")
    store.close()

    again = make_store()
    assert not staged.exists()
    assert not orphan.exists()
    assert kept.folder.is_dir() and (kept.folder / "job.zip").is_file()
    assert stray_file.exists()
    assert [r.job_id for r in again.list()] == [kept.job_id]


def test_store_files_live_in_the_workspace(make_store: MakeStore, tmp_path: Path) -> None:
    store = make_store()
    assert store.root == tmp_path / "ws"
    assert (tmp_path / "ws" / "store.db").is_file()
    assert store.jobs_dir == tmp_path / "ws" / "jobs"


def test_the_submitters_role_is_kept_and_an_older_store_gains_the_column(
    make_store: MakeStore, tmp_path: Path
) -> None:
    import sqlite3

    store = make_store()
    old = submit(store, "before-roles")
    store.close()
    db = sqlite3.connect(tmp_path / "ws" / "store.db")
    db.execute("ALTER TABLE jobs DROP COLUMN submitter_role")  # as a store made before roles
    db.commit()
    db.close()
    store = make_store()
    assert store.get(old.job_id).submitter_role == ""  # unknown: a role rule refuses it
    staged = store.staging_folder()
    (staged / "job.zip").write_bytes(b"PK fake")
    rec = store.create(
        name="with-role",
        spec={"name": "with-role", "min_clients": 1, "workflow": {"name": "fedavg"}},
        staged_folder=staged,
        submitter="l@x",
        submitter_org="org-x",
        submitter_role="lead",
        package_sha256="ab" * 32,
        package_size=7,
        num_rounds=1,
    )
    assert store.get(rec.job_id).submitter_role == "lead"


# -- signatures and chosen ids ---------------------------------------------------


def test_a_job_keeps_its_signature_and_the_id_its_submitter_chose(
    make_store: MakeStore,
) -> None:
    store = make_store()
    job_id = str(uuid.uuid4())
    staged = store.staging_folder(job_id)
    assert staged.name == job_id
    (staged / "job.zip").write_bytes(b"PK fake")
    (staged / "job").mkdir()
    signature = {"document": {"job_id": job_id, "submitter": "a@x"}, "certificate": "PEM"}
    rec = store.create(
        name="signed",
        spec={"name": "signed"},
        staged_folder=staged,
        submitter="a@x",
        submitter_org="x",
        package_sha256="ab" * 32,
        package_size=7,
        num_rounds=1,
        signature=signature,
    )
    assert rec.job_id == job_id and rec.signature == signature
    assert submit(store, "unsigned").signature is None
    store.close()
    assert make_store().get(job_id).signature == signature


def test_a_chosen_id_must_be_a_new_uuid(store: JobStore) -> None:
    from shoal.errors import JobValidationError

    taken = submit(store, "a").job_id
    with pytest.raises(JobValidationError, match="already in use"):
        store.staging_folder(taken)
    with pytest.raises(JobValidationError, match="is not a UUID"):
        store.staging_folder("../escape")
    staged = store.staging_folder(str(uuid.uuid4()))  # received, not yet adopted
    with pytest.raises(JobValidationError, match="already in use"):
        store.staging_folder(staged.name)


def test_a_store_from_before_signatures_keeps_and_lists_its_jobs(tmp_path: Path) -> None:
    """The schema of the last release without signatures: its jobs are listed
    after the upgrade, unsigned (every site refuses them)."""
    import sqlite3

    ws = tmp_path / "ws"
    job_id = str(uuid.uuid4())
    (ws / "jobs" / job_id / "job").mkdir(parents=True)
    (ws / "jobs" / job_id / "job.zip").write_bytes(b"PK old")
    db = sqlite3.connect(ws / "store.db")
    db.executescript(
        """
        CREATE TABLE jobs (
            job_id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL,
            submit_time TEXT NOT NULL, start_time TEXT, end_time TEXT,
            submitter TEXT NOT NULL, submitter_org TEXT NOT NULL, spec_json TEXT NOT NULL,
            sites_json TEXT NOT NULL DEFAULT '[]', current_round INTEGER, num_rounds INTEGER,
            error TEXT, attempts INTEGER NOT NULL DEFAULT 0, package_sha256 TEXT NOT NULL,
            package_size INTEGER NOT NULL, seq INTEGER NOT NULL, stored_bytes INTEGER
        );
        """
    )
    db.execute(
        "INSERT INTO jobs (job_id, name, status, submit_time, submitter, submitter_org,"
        " spec_json, package_sha256, package_size, seq) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (job_id, "old", "FINISHED:COMPLETED", "2026-01-01T00:00:00+00:00", "a@x", "x",
         json.dumps({"name": "old"}), "cd" * 32, 6, 1),
    )  # fmt: skip
    db.commit()
    db.close()

    store = JobStore(ws)
    try:
        [old] = store.list()
        assert (old.job_id, old.name, old.signature) == (job_id, "old", None)
        assert (old.folder / "job.zip").read_bytes() == b"PK old"
        assert submit(store, "new").job_id in [r.job_id for r in store.list()]
    finally:
        store.close()
