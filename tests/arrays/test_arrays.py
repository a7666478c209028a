"""shoal.arrays: round trips, safetensors compatibility, and every refusal."""

from __future__ import annotations

import contextlib
import json
import struct
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.arrays import (
    array_specs,
    arrays_from_bytes,
    check_compatible,
    check_finite,
    decode_header,
    encode_arrays,
    is_floating,
    load_arrays,
    save_arrays,
    write_arrays,
)
from shoal.errors import ArrayFormatError

DTYPES = [
    np.float16,
    np.float32,
    np.float64,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.bool_,
]


def _sample() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    for i, dt in enumerate(DTYPES):
        out[f"a{i}/{np.dtype(dt).name}"] = (rng.normal(size=(3, 4)) * 10).astype(dt)
    out["scalar"] = np.array(3.5, dtype=np.float32)
    out["empty"] = np.zeros((0, 5), dtype=np.float32)
    return out


def _raw_file(path: Path, header: object, data: bytes, *, length: int | None = None) -> Path:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


@pytest.mark.parametrize("mmap", [True, False])
def test_round_trip_all_dtypes(tmp_path: Path, mmap: bool) -> None:
    arrays = _sample()
    path = save_arrays(tmp_path / "m.safetensors", arrays, metadata={"round": "3"})
    loaded = load_arrays(path, mmap=mmap)
    assert list(loaded) == list(arrays)
    for name, arr in arrays.items():
        assert loaded[name].dtype == arr.dtype, name
        assert loaded[name].shape == arr.shape, name
        np.testing.assert_array_equal(loaded[name], arr)
    assert loaded["a1/float32"].flags.writeable is (not mmap)


def test_header_is_padded_and_aligned(tmp_path: Path) -> None:
    path = save_arrays(tmp_path / "m.safetensors", {"b": np.zeros(3, np.int8), "a": np.ones(2)})
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    assert n % 8 == 0
    header = decode_header(raw[8 : 8 + n], data_bytes=len(raw) - 8 - n)
    # float64 first: every array is aligned to its item size.
    assert header.arrays["a"].begin == 0
    assert header.arrays["b"].begin == 16


def test_non_contiguous_and_big_endian(tmp_path: Path) -> None:
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    arrays = {
        "fortran": np.asfortranarray(base),
        "strided": base[:, ::2],
        "big": base.astype(">f4"),
        "big_scalar": np.array(7, dtype=">i4"),
    }
    loaded = load_arrays(save_arrays(tmp_path / "x.st", arrays))
    np.testing.assert_array_equal(loaded["fortran"], base)
    np.testing.assert_array_equal(loaded["strided"], base[:, ::2])
    np.testing.assert_array_equal(loaded["big"], base)
    assert loaded["big"].dtype == np.dtype("<f4")
    assert int(loaded["big_scalar"]) == 7


def test_encoded_stream_is_the_file_and_decodes_from_memory(tmp_path: Path) -> None:
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    arrays = {**_sample(), "fortran": np.asfortranarray(base), "big": base.astype(">f4")}
    written = write_arrays(tmp_path / "x.st", arrays, {"round": "3"})
    encoded = encode_arrays(arrays, {"round": "3"})
    data = b"".join(bytes(p) for p in encoded.pieces)
    assert data == (tmp_path / "x.st").read_bytes()
    assert encoded.size == written.size == len(data)
    from_file, from_bytes = load_arrays(written.path), arrays_from_bytes(data)
    assert list(from_bytes) == list(from_file)
    for name, arr in from_file.items():
        np.testing.assert_array_equal(from_bytes[name], arr)
        assert not from_bytes[name].flags.writeable
    with pytest.raises(ArrayFormatError):
        arrays_from_bytes(data[: len(data) - 1])
    with pytest.raises(ArrayFormatError, match="not supported"):
        encode_arrays({"c": np.zeros(2, dtype=np.complex64)})  # refused before any piece


def test_atomic_write_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "m.safetensors"
    save_arrays(target, {"a": np.ones(3)})
    with pytest.raises(ArrayFormatError):
        save_arrays(target, {"a": np.ones(3), "b": np.array(["x"])})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    np.testing.assert_array_equal(load_arrays(target)["a"], np.ones(3))


def test_safetensors_reads_ours(tmp_path: Path) -> None:
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    arrays = _sample()
    path = save_arrays(tmp_path / "m.safetensors", arrays, metadata={"k": "v"})
    theirs = safetensors_numpy.load_file(str(path))
    assert set(theirs) == set(arrays)
    for name, arr in arrays.items():
        np.testing.assert_array_equal(theirs[name], arr)


def test_we_read_safetensors(tmp_path: Path) -> None:
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    arrays = _sample()
    path = tmp_path / "theirs.safetensors"
    safetensors_numpy.save_file(arrays, str(path), metadata={"k": "v"})
    ours = load_arrays(path)
    assert set(ours) == set(arrays)
    for name, arr in arrays.items():
        np.testing.assert_array_equal(ours[name], arr)
        assert ours[name].dtype == arr.dtype


def test_metadata_round_trip(tmp_path: Path) -> None:
    path = save_arrays(tmp_path / "m", {"a": np.ones(1)}, metadata={"round": "2"})
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    assert decode_header(raw[8 : 8 + n]).metadata == {"round": "2"}


@pytest.mark.parametrize(
    ("header", "data", "length", "reason"),
    [
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"", None, "truncated"),
        (
            {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
            b"\0" * 8,
            None,
            "trailing",
        ),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, None, "shape"),
        (
            {"a": {"dtype": "X9", "shape": [1], "data_offsets": [0, 4]}},
            b"\0" * 4,
            None,
            "unknown dtype",
        ),
        (
            {"a": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}},
            b"\0" * 2,
            None,
            "not supported",
        ),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
            },
            b"\0" * 8,
            None,
            "overlap",
        ),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, None, "gap"),
        (
            {"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}},
            b"\0" * 4,
            None,
            "before begin",
        ),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, None, "shape"),
        (
            {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}},
            b"\0" * 4,
            None,
            "data_offsets",
        ),
        ({"a": [1, 2]}, b"", None, "not an object"),
        ({"__metadata__": {"a": 1}}, b"", None, "__metadata__"),
        (b'{"a": ', b"", None, "not valid JSON"),
        (b"[1, 2]", b"", None, "not a JSON object"),
        (
            b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},'
            b' "a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}',
            b"\0\0",
            None,
            "more than once",
        ),
        ({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, b"\0", 10_000, "beyond"),
        ({}, b"", 0, "length is 0"),
    ],
)
def test_refusals(
    tmp_path: Path, header: object, data: bytes, length: int | None, reason: str
) -> None:
    path = _raw_file(tmp_path / "bad", header, data, length=length)
    with pytest.raises(ArrayFormatError, match=reason):
        load_arrays(path)
    with pytest.raises(ArrayFormatError, match=reason):
        load_arrays(path, mmap=False)


def test_short_file(tmp_path: Path) -> None:
    (tmp_path / "s").write_bytes(b"\x01\x02")
    with pytest.raises(ArrayFormatError, match="truncated"):
        load_arrays(tmp_path / "s")
    with pytest.raises(ArrayFormatError, match="no such file"):
        load_arrays(tmp_path / "nope")


def test_truncated_real_file(tmp_path: Path) -> None:
    path = save_arrays(tmp_path / "m", {"a": np.ones((10, 10), np.float32)})
    raw = path.read_bytes()
    path.write_bytes(raw[:-7])
    with pytest.raises(ArrayFormatError, match="truncated"):
        load_arrays(path)


def test_refuses_unsupported_input(tmp_path: Path) -> None:
    with pytest.raises(ArrayFormatError, match="complex128"):
        save_arrays(tmp_path / "m", {"c": np.ones(2, dtype=np.complex128)})
    with pytest.raises(ArrayFormatError, match="reserved"):
        save_arrays(tmp_path / "m", {"__metadata__": np.ones(2)})
    with pytest.raises(ArrayFormatError, match="non-empty"):
        save_arrays(tmp_path / "m", {"": np.ones(2)})
    with pytest.raises(ArrayFormatError, match="metadata"):
        save_arrays(tmp_path / "m", {"a": np.ones(2)}, metadata={"a": 1})  # type: ignore[dict-item]


def test_specs_and_compatibility() -> None:
    ref = array_specs({"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)})
    assert ref == {"w": ("float32", (2, 3)), "b": ("float32", (3,))}
    check_compatible(ref, {"b": np.ones(3, np.float32), "w": np.ones((2, 3), np.float32)})
    with pytest.raises(ArrayFormatError, match="'b' is missing"):
        check_compatible(ref, {"w": np.ones((2, 3), np.float32)})
    with pytest.raises(ArrayFormatError, match="'x' is not in the model"):
        check_compatible(
            ref, {"w": np.ones((2, 3), np.float32), "b": np.ones(3, np.float32), "x": np.ones(1)}
        )
    with pytest.raises(ArrayFormatError, match=r"'w': shape \(3, 2\)"):
        check_compatible(ref, {"w": np.ones((3, 2), np.float32), "b": np.ones(3, np.float32)})
    with pytest.raises(ArrayFormatError, match="'b': dtype float64"):
        check_compatible(ref, {"w": np.ones((2, 3), np.float32), "b": np.ones(3)})


def test_check_finite() -> None:
    check_finite({"a": np.ones(3), "i": np.array([1, 2]), "e": np.zeros(0)})
    with pytest.raises(ArrayFormatError, match="'bad'"):
        check_finite({"a": np.ones(3), "bad": np.array([1.0, np.nan], np.float32)})
    with pytest.raises(ArrayFormatError, match="'inf'"):
        check_finite({"inf": np.array([[np.inf]], np.float16)})
    # A NaN in a later slab of a big layer, after smaller layers of other dtypes.
    big = np.zeros(5 * 1024 * 1024, np.float32)
    big[-1] = np.nan
    with pytest.raises(ArrayFormatError, match="'big'"):
        check_finite({"s": np.ones(2, np.float16), "d": np.ones(9), "big": big})
    big[-1] = 0
    check_finite({"s": np.ones(2, np.float16), "big": big, "d": np.ones(9)})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_decode_header_fuzz(raw: bytes) -> None:
    with contextlib.suppress(ArrayFormatError):
        decode_header(raw, data_bytes=len(raw))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_load_mutated_file_fuzz(tmp_path: Path, data: st.DataObject) -> None:
    path = tmp_path / "m"
    if not path.exists():
        save_arrays(
            path, {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.int8)}
        )
    raw = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    bad = tmp_path / "bad"
    bad.write_bytes(bytes(raw[:cut]))
    with contextlib.suppress(ArrayFormatError):
        load_arrays(bad)


def test_arrays_from_memory_read_only_the_header_to_parse_it() -> None:
    """Decoding a large in-memory model must not copy it (BytesIO copies a
    memoryview it is given): the arrays are views of the buffer."""
    import tracemalloc

    from shoal.arrays import arrays_from_bytes, encode_arrays

    encoded = encode_arrays({"w": np.arange(4 * 2**20, dtype=np.float32)})
    data = bytearray(b"".join(encoded.pieces))
    tracemalloc.start()
    try:
        arrays = arrays_from_bytes(memoryview(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak
    assert np.shares_memory(arrays["w"], np.frombuffer(data, dtype=np.uint8))
    assert arrays["w"][-1] == 4 * 2**20 - 1


def test_write_over_a_file_the_caller_is_done_with(tmp_path: Path) -> None:
    from shoal import checksum

    old = tmp_path / "results" / "site-1.safetensors"
    old.parent.mkdir()
    old.write_bytes(b"x" * 10_000)  # longer than what is written over it
    old.chmod(0o644)
    target = tmp_path / "models" / "m.safetensors"
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    written = write_arrays(target, arrays, reuse=old, durable=True)
    assert not old.exists()
    assert written.size == target.stat().st_size < 10_000
    assert written.checksum == checksum.of_file(target)
    np.testing.assert_array_equal(load_arrays(target)["w"], arrays["w"])
    assert target.stat().st_mode & 0o777 == 0o600  # as a new file's
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.safetensors"]
    # Nothing to reuse (gone already): a new file, same result.
    again = write_arrays(tmp_path / "models" / "n.safetensors", arrays, reuse=old)
    assert again.checksum == written.checksum


# bfloat16 bit patterns a cast would lose: quiet NaNs with payloads, a
# signalling NaN, -0.0, infinities, the smallest subnormal, the largest finite.
BF16_BITS = [0x7FC1, 0xFFC0, 0x7F81, 0x8000, 0x0000, 0x7F80, 0xFF80, 0x0001, 0x7F7F, 0x3F80]


def _bf16(bits: list[int], shape: tuple[int, ...] = (-1,)) -> np.ndarray:
    return np.array(bits, dtype=np.uint16).view(ml_dtypes.bfloat16).reshape(shape)


def _same_bits(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("mmap", [True, False])
def test_bfloat16_round_trip_is_bit_exact(tmp_path: Path, mmap: bool) -> None:
    arrays = {
        "w": _bf16(BF16_BITS, (2, 5)),
        "scalar": _bf16([0x7FC1], ()),
        "empty": _bf16([], (0, 3)),
        "f": np.ones(3, np.float32),
    }
    path = save_arrays(tmp_path / "m.safetensors", arrays)
    raw = path.read_bytes()
    header = decode_header(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])
    assert header.arrays["w"].dtype == "bfloat16"
    assert json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])["w"]["dtype"] == "BF16"
    loaded = load_arrays(path, mmap=mmap)
    for name, arr in arrays.items():
        _same_bits(loaded[name], arr)
    # The stream and an in-memory decode give the same bits; a strided view is
    # laid out as C order on the way.
    strided = {"t": _bf16(BF16_BITS, (2, 5)).T}
    encoded = encode_arrays(strided)
    data = b"".join(bytes(p) for p in encoded.pieces)
    assert len(data) == encoded.size
    _same_bits(arrays_from_bytes(data)["t"], np.ascontiguousarray(strided["t"]))


def test_safetensors_and_we_agree_on_bfloat16(tmp_path: Path) -> None:
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    arrays = {"w": _bf16(BF16_BITS, (5, 2)), "b": np.arange(3, dtype=np.int64)}
    ours = save_arrays(tmp_path / "ours.safetensors", arrays)
    for name, arr in safetensors_numpy.load_file(str(ours)).items():
        _same_bits(arr, arrays[name])
    theirs = tmp_path / "theirs.safetensors"
    safetensors_numpy.save_file(arrays, str(theirs))
    for name, arr in load_arrays(theirs).items():
        _same_bits(arr, arrays[name])


def test_check_finite_sees_bfloat16() -> None:
    assert is_floating(_bf16([0x3F80]).dtype) and is_floating(np.dtype(np.float16))
    assert not is_floating(np.dtype(np.int16))
    check_finite({"w": _bf16([0x3F80, 0x8000, 0x7F7F])})
    with pytest.raises(ArrayFormatError, match="'w' contains NaN"):
        check_finite({"w": _bf16([0x3F80, 0x7FC1])})
    with pytest.raises(ArrayFormatError, match="'w' contains NaN or Inf"):
        check_finite({"w": _bf16([0xFF80])})


def test_ml_dtypes_is_imported_only_for_bfloat16(tmp_path: Path) -> None:
    """Importing ml_dtypes costs ~0.6 s: a float32 job never pays it."""
    f32 = save_arrays(tmp_path / "f32", {"w": np.ones(2, np.float32)})
    bf16 = save_arrays(tmp_path / "bf16", {"w": _bf16([0x3F80])})
    code = (
        "import sys\n"
        "from shoal.arrays import load_arrays\n"
        "load_arrays(sys.argv[1])\n"
        "print('ml_dtypes' in sys.modules)\n"
    )
    for path, imported in ((f32, "False"), (bf16, "True")):
        out = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
        )
        assert out.stdout.split() == [imported], out.stderr
