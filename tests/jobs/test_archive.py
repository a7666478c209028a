"""pack_job and safe_extract, including every hostile archive we refuse."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.errors import JobValidationError
from shoal.jobs import MAX_TOTAL_BYTES, check_archive_size, pack_job, safe_extract
from shoal.jobs.archive import TOTAL_RATIO_GRACE_BYTES


def _zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]], **kw: object) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data, **kw)  # type: ignore[arg-type]
    return path


def test_pack_is_deterministic_and_extracts(job_dir: Path, tmp_path: Path) -> None:
    (job_dir / "app" / "__pycache__").mkdir()
    (job_dir / "app" / "__pycache__" / "x.pyc").write_bytes(b"junk")
    (job_dir / "app" / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(job_dir / "app" / "run.sh", 0o755)
    a = pack_job(job_dir, tmp_path / "a.zip")
    os.utime(job_dir / "app" / "train.py", (1, 1))
    b = pack_job(job_dir, tmp_path / "b.zip")
    assert a.read_bytes() == b.read_bytes()
    with zipfile.ZipFile(a) as zf:
        names = zf.namelist()
    assert names == sorted(names)
    assert "job.yml" in names and "app/train.py" in names
    assert not any("__pycache__" in n for n in names)
    stats = safe_extract(a, tmp_path / "out")
    assert stats.files == len(names)
    assert (tmp_path / "out" / "app" / "train.py").read_text() == "print('train')\n"
    assert os.access(tmp_path / "out" / "app" / "run.sh", os.X_OK)
    assert not os.access(tmp_path / "out" / "app" / "train.py", os.X_OK)


def test_pack_follows_links_inside_refuses_outside(job_dir: Path, tmp_path: Path) -> None:
    (job_dir / "app" / "alias.py").symlink_to(job_dir / "app" / "train.py")
    archive = pack_job(job_dir, tmp_path / "ok.zip")
    with zipfile.ZipFile(archive) as zf:
        assert zf.read("app/alias.py") == b"print('train')\n"
    (tmp_path / "secret").write_text("s")
    (job_dir / "app" / "leak").symlink_to(tmp_path / "secret")
    with pytest.raises(JobValidationError, match="outside the job"):
        pack_job(job_dir, tmp_path / "bad.zip")
    assert not (tmp_path / "bad.zip").exists()
    (job_dir / "app" / "leak").unlink()
    (job_dir / "app" / "loop").symlink_to(job_dir / "app")
    with pytest.raises(JobValidationError, match="loops"):
        pack_job(job_dir, tmp_path / "bad.zip")


def test_pack_refuses_non_job(tmp_path: Path) -> None:
    with pytest.raises(JobValidationError, match="no job.yml"):
        pack_job(tmp_path, tmp_path / "x.zip")


def test_pack_respects_archive_cap(job_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(JobValidationError, match="limit"):
        pack_job(job_dir, tmp_path / "x.zip", max_archive_bytes=10)
    assert not (tmp_path / "x.zip").exists()


def _symlink_entry(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


HOSTILE: list[tuple[str, list[tuple[str | zipfile.ZipInfo, bytes]], str]] = [
    ("abs", [("/etc/passwd", b"x")], "absolute path"),
    ("dotdot", [("app/../../evil", b"x")], r"'\.\.' in path"),
    ("dotdot_first", [("../evil", b"x")], r"'\.\.' in path"),
    ("drive", [("C:/evil", b"x")], "drive letter"),
    ("backslash", [("app\\..\\evil", b"x")], "backslash"),
    ("symlink", [(_symlink_entry("app/link", "/etc"), b"/etc")], "symbolic links"),
    ("dup", [("a.txt", b"1"), ("a.txt", b"2")], "duplicate"),
    ("file_then_dir", [("a", b"1"), ("a/b", b"2")], "is a file"),
    ("dir_then_file", [("a/b", b"1"), ("a", b"2")], "also used as a folder"),
    ("empty_component", [("a//b", b"1")], "empty or '.'"),
    ("dot_component", [("./a", b"1")], "empty or '.'"),
]


@pytest.mark.parametrize(("label", "entries", "message"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_names(
    tmp_path: Path, label: str, entries: list[tuple[str | zipfile.ZipInfo, bytes]], message: str
) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        archive = _zip(tmp_path / f"{label}.zip", entries)
    dest = tmp_path / "dest"
    with pytest.raises(JobValidationError, match=message):
        safe_extract(archive, dest)
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == [archive]


def test_too_many_files(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "many.zip", [(f"f{i}", b"") for i in range(11)])
    with pytest.raises(JobValidationError, match="11 entries, more than 10"):
        safe_extract(archive, tmp_path / "d", max_files=10)
    assert not (tmp_path / "d").exists()


def test_total_size_cap(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "big.zip", [("a", os.urandom(3000)), ("b", os.urandom(3000))])
    with pytest.raises(JobValidationError, match="more than 5000 bytes"):
        safe_extract(archive, tmp_path / "d", max_total_bytes=5000)
    assert not (tmp_path / "d").exists()


def test_zip_bomb_ratio(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "bomb.zip", [("zeros", b"\0" * (8 * 1024 * 1024))])
    with pytest.raises(JobValidationError, match="compression ratio"):
        safe_extract(archive, tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_small_repetitive_file_is_fine(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "ok.zip", [("zeros", b"\0" * 100_000)])
    safe_extract(archive, tmp_path / "d")
    assert (tmp_path / "d" / "zeros").stat().st_size == 100_000


def test_many_small_entries_hit_the_overall_ratio(tmp_path: Path) -> None:
    # Each entry is under RATIO_GRACE_BYTES, so only the whole-archive ratio sees it.
    entries = [
        (f"z{i}", b"\0" * (1024 * 1024)) for i in range(TOTAL_RATIO_GRACE_BYTES // 2**20 + 4)
    ]
    archive = _zip(tmp_path / "bomb.zip", entries)
    with pytest.raises(JobValidationError, match="overall compression ratio above 200"):
        safe_extract(archive, tmp_path / "d")
    assert not (tmp_path / "d").exists()
    # The same archive within the grace of a bigger ratio is fine.
    safe_extract(archive, tmp_path / "ok", max_ratio=100_000)


def test_default_total_cap_is_a_job_size(tmp_path: Path) -> None:
    assert MAX_TOTAL_BYTES == 256 * 1024 * 1024
    entries = [(f"r{i}", os.urandom(3000)) for i in range(4)]
    archive = _zip(tmp_path / "r.zip", entries)
    safe_extract(archive, tmp_path / "d")  # incompressible data: no ratio problem


def test_lying_sizes_meet_the_overall_ratio_while_writing(tmp_path: Path) -> None:
    # Central directory: 20 entries of 100 bytes. Real data: 1 MiB of zeros each.
    entries = [(f"z{i}", b"\0" * (1024 * 1024)) for i in range(20)]
    raw = _zip(tmp_path / "honest.zip", entries).read_bytes()
    for i in range(20):
        raw = _patch_sizes(raw, f"z{i}".encode(), 100)
    liar = tmp_path / "liar.zip"
    liar.write_bytes(raw)
    # zipfile stops each entry at its declared size, so the CRC fails first.
    with pytest.raises(JobValidationError, match="larger than its header says|Bad CRC"):
        safe_extract(liar, tmp_path / "d")
    assert not (tmp_path / "d").exists()


def _patch_sizes(raw: bytes, name: bytes, new_size: int) -> bytes:
    """Rewrite the uncompressed size of ``name`` in both the local and central headers."""
    out = bytearray(raw)
    # local header: sig PK\x03\x04, uncompressed size at offset 22
    i = out.find(b"PK\x03\x04")
    while i != -1:
        nlen = int.from_bytes(out[i + 26 : i + 28], "little")
        if out[i + 30 : i + 30 + nlen] == name:
            out[i + 22 : i + 26] = new_size.to_bytes(4, "little")
        i = out.find(b"PK\x03\x04", i + 4)
    # central header: sig PK\x01\x02, uncompressed size at offset 24
    i = out.find(b"PK\x01\x02")
    while i != -1:
        nlen = int.from_bytes(out[i + 28 : i + 30], "little")
        if out[i + 46 : i + 46 + nlen] == name:
            out[i + 24 : i + 28] = new_size.to_bytes(4, "little")
        i = out.find(b"PK\x01\x02", i + 4)
    return bytes(out)


def test_lying_header_is_measured(tmp_path: Path) -> None:
    data = os.urandom(4000)
    honest = _zip(tmp_path / "honest.zip", [("a", data)])
    liar = tmp_path / "liar.zip"
    liar.write_bytes(_patch_sizes(honest.read_bytes(), b"a", 100))
    # The header claims 100 bytes, well under the cap; the real data is 4000.
    with pytest.raises(JobValidationError):
        safe_extract(liar, tmp_path / "d", max_total_bytes=1000)
    assert not (tmp_path / "d").exists()


def test_encrypted_flag_refused(tmp_path: Path) -> None:
    info = zipfile.ZipInfo("a")
    archive = _zip(tmp_path / "e.zip", [(info, b"x")])
    raw = bytearray(archive.read_bytes())
    c = raw.find(b"PK\x01\x02")
    raw[c + 8] |= 1
    loc = raw.find(b"PK\x03\x04")
    raw[loc + 6] |= 1
    archive.write_bytes(bytes(raw))
    with pytest.raises(JobValidationError, match="encrypted"):
        safe_extract(archive, tmp_path / "d")


def test_not_a_zip_and_archive_cap(tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"this is not a zip")
    with pytest.raises(JobValidationError, match="corrupt"):
        safe_extract(junk, tmp_path / "d")
    with pytest.raises(JobValidationError, match="limit"):
        check_archive_size(junk, max_bytes=5)
    assert check_archive_size(junk) == len(b"this is not a zip")
    with pytest.raises(JobValidationError, match="limit"):
        safe_extract(junk, tmp_path / "d", max_archive_bytes=5)
    with pytest.raises(JobValidationError, match="cannot read"):
        check_archive_size(tmp_path / "missing.zip")
    assert not (tmp_path / "d").exists()


def test_existing_dest_refused(job_dir: Path, tmp_path: Path) -> None:
    archive = pack_job(job_dir, tmp_path / "j.zip")
    (tmp_path / "d").mkdir()
    with pytest.raises(JobValidationError, match="already exists"):
        safe_extract(archive, tmp_path / "d")


def test_corrupt_data_leaves_no_dest(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "c.zip", [("a", os.urandom(5000))])
    raw = bytearray(archive.read_bytes())
    raw[100] ^= 0xFF  # inside the deflated data
    archive.write_bytes(bytes(raw))
    with pytest.raises(JobValidationError):
        safe_extract(archive, tmp_path / "d")
    assert not (tmp_path / "d").exists()


def _extract_or_refuse(raw: bytes, tmp_path: Path) -> None:
    archive = tmp_path / "fuzz.zip"
    archive.write_bytes(raw)
    dest = tmp_path / "dest"
    try:
        safe_extract(archive, dest, max_total_bytes=1 << 20)
    except JobValidationError:
        assert not dest.exists()
    else:
        for p in dest.rglob("*"):
            assert not p.is_symlink()
            assert p.resolve().is_relative_to(dest.resolve())
        import shutil

        shutil.rmtree(dest)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(max_size=2048))
def test_fuzz_random_bytes(tmp_path: Path, raw: bytes) -> None:
    _extract_or_refuse(raw, tmp_path)


def _valid_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("job.yml", "name: x\n" * 20)
        zf.writestr("app/", b"")
        zf.writestr("app/train.py", "print('hello')\n" * 30)
        zf.writestr(zipfile.ZipInfo("app/stored.bin"), bytes(range(256)))
    return buf.getvalue()


VALID = _valid_zip()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzz_mutated_valid_zip(tmp_path: Path, data: st.DataObject) -> None:
    raw = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    _extract_or_refuse(bytes(raw), tmp_path)
