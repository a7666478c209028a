"""Weights on disk and on the wire: the safetensors layout, without pickle.

A file is an 8-byte little-endian header length ``N``, ``N`` bytes of JSON
(padded with spaces to a multiple of 8), then the raw little-endian bytes of
every array::

    {"dense/kernel": {"dtype": "F32", "shape": [784, 10], "data_offsets": [0, 31360]},
     "__metadata__": {"round": "3"}}

Offsets are relative to the first byte after the header; together the arrays
cover the data region exactly, without gaps or overlaps. Files written here are
read by the ``safetensors`` package and the other way round.

    save_arrays(path, {"w": np.zeros((2, 3), np.float32)}, metadata={"round": "1"})
    arrays = load_arrays(path)          # read-only, memory-mapped

Only numpy is needed, and ``ml_dtypes`` for bfloat16 (``BF16``), which numpy
lacks: it is imported only when a bfloat16 array or a ``BF16`` header entry is
seen (the import alone costs ~0.6 s). Nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import mmap as _mmap
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from shoal import checksum
from shoal.errors import ArrayFormatError

__all__ = [
    "MAX_HEADER_BYTES",
    "ArraySpec",
    "EncodedArrays",
    "Header",
    "array_specs",
    "arrays_from_bytes",
    "check_compatible",
    "check_finite",
    "decode_header",
    "is_floating",
    "encode_arrays",
    "encode_header",
    "load_arrays",
    "read_header",
    "WrittenArrays",
    "save_arrays",
    "sync_file",
    "write_arrays",
]

#: The largest JSON header accepted (the safetensors package uses the same cap).
MAX_HEADER_BYTES = 100 * 1024 * 1024

#: safetensors dtype name -> numpy dtype (little-endian). BF16 is below (its
#: numpy dtype comes from ml_dtypes); the F8 types and the rest are refused
#: with a clear message.
_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("bool"),
    "U8": np.dtype("<u1"),
    "I8": np.dtype("<i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
}
#: safetensors dtype name -> the ``ml_dtypes`` type that numpy uses for it.
_ML_DTYPES = {"BF16": "bfloat16"}
_NAMES: dict[str, str] = {dt.name: code for code, dt in _DTYPES.items()}
_NAMES.update({name: code for code, name in _ML_DTYPES.items()})
_UNSUPPORTED = {"F8_E4M3", "F8_E5M2", "C64", "F4", "F6_E2M3", "F6_E3M2", "E8M0"}

# Big enough to keep syscalls rare, small enough that converting a
# non-contiguous or big-endian array never copies a whole layer at once.
_CHUNK_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ArraySpec:
    """Where one array lives in a file, as its header says."""

    #: numpy dtype name, e.g. ``"float32"``.
    dtype: str
    #: The array's shape (``()`` for a scalar).
    shape: tuple[int, ...]
    #: First byte, relative to the start of the data region.
    begin: int
    #: One past the last byte, relative to the start of the data region.
    end: int


@dataclass(frozen=True)
class Header:
    """A decoded and validated file header."""

    #: Array name -> placement, in the order the header lists them.
    arrays: dict[str, ArraySpec]
    #: The free-form ``__metadata__`` string map (empty when absent).
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def data_bytes(self) -> int:
        """Length of the data region the arrays cover."""
        return max((s.end for s in self.arrays.values()), default=0)


def _ml_dtype(code: str) -> np.dtype[Any]:
    try:
        import ml_dtypes
    except ImportError:
        raise ArrayFormatError(
            f"dtype {code} needs the ml_dtypes package (a dependency of shoal): "
            "pip install ml_dtypes"
        ) from None
    return np.dtype(getattr(ml_dtypes, _ML_DTYPES[code]))


def _numpy_dtype(name: str) -> np.dtype[Any]:
    """The numpy dtype called ``name`` (an :class:`ArraySpec` dtype), little-endian."""
    code = _NAMES.get(name)
    dtype = _ml_dtype(code) if code in _ML_DTYPES else np.dtype(name)
    return dtype.newbyteorder("<")


def is_floating(dtype: np.dtype[Any]) -> bool:
    """True for floating-point dtypes, bfloat16 included (numpy files it as
    ``kind == "V"``, not ``"f"``)."""
    return dtype.kind == "f" or _NAMES.get(dtype.name) in _ML_DTYPES


def _dtype_code(dtype: np.dtype[Any], name: str) -> str:
    code = _NAMES.get(dtype.name)
    if code is None:
        raise ArrayFormatError(
            f"array {name!r}: dtype {dtype} is not supported "
            f"(supported: {', '.join(sorted(_NAMES))})"
        )
    return code


def _as_array(name: object, value: object) -> np.ndarray:
    if not isinstance(name, str) or not name:
        raise ArrayFormatError(f"array names must be non-empty strings, got {name!r}")
    if name == "__metadata__":
        raise ArrayFormatError("'__metadata__' is reserved and cannot name an array")
    arr = np.asarray(value)
    _dtype_code(arr.dtype, name)
    return arr


def encode_header(
    arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> tuple[bytes, list[str]]:
    """The padded header for ``arrays`` and the order their bytes follow it.

    Arrays are laid out by descending item size (as safetensors does) so every
    array starts aligned to its own item size.
    """
    order = sorted(arrays, key=lambda n: -arrays[n].dtype.itemsize)
    offsets: dict[str, tuple[int, int]] = {}
    pos = 0
    for name in order:
        nbytes = int(arrays[name].nbytes)
        offsets[name] = (pos, pos + nbytes)
        pos += nbytes
    header: dict[str, Any] = {}
    if metadata:
        meta = dict(metadata)
        for k, v in meta.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ArrayFormatError(
                    f"metadata must map strings to strings, got {k!r}: {type(v).__name__}"
                )
        header["__metadata__"] = meta
    for name, arr in arrays.items():
        header[name] = {
            "dtype": _dtype_code(arr.dtype, name),
            "shape": [int(d) for d in arr.shape],
            "data_offsets": list(offsets[name]),
        }
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return raw, order


def _bytes_view(arr: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous ``arr`` as a flat memoryview (no copy).

    Through a uint8 view: numpy's buffer protocol refuses ml_dtypes' types
    ("cannot include dtype 'E' in a buffer")."""
    return arr.reshape(-1).view(np.uint8).data


def _array_pieces(arr: np.ndarray) -> Iterator[memoryview | bytes]:
    """The little-endian C-order bytes of ``arr``: its own buffer when it has
    that layout already, else converted slab by slab."""
    little = arr.dtype.newbyteorder("<")
    if arr.flags.c_contiguous and little == arr.dtype:
        if arr.nbytes:
            yield _bytes_view(arr)
        return
    if arr.ndim == 0:
        yield arr.astype(little).tobytes()
        return
    # Convert slab by slab along the first axis (C order follows it), so a
    # Fortran-ordered or big-endian layer is never copied whole.
    step = max(1, _CHUNK_BYTES // max(1, arr[0:1].nbytes))
    for i in range(0, arr.shape[0], step):
        yield np.ascontiguousarray(arr[i : i + step], dtype=little).tobytes()


@dataclass(frozen=True)
class EncodedArrays:
    """The file :func:`write_arrays` would write, as a stream (see :func:`encode_arrays`)."""

    #: Total bytes the pieces add up to.
    size: int
    #: The bytes in order: the length prefix and header, then each array.
    pieces: Iterator[memoryview | bytes]


def encode_arrays(
    arrays: Mapping[str, Any], metadata: Mapping[str, str] | None = None
) -> EncodedArrays:
    """The safetensors bytes of ``arrays`` without building them: the size now,
    the bytes piece by piece (arrays' own buffers where possible).

    Names, dtypes and metadata are checked here, before the first piece, so a
    bad model fails before anything is written or sent.
    """
    checked = {name: _as_array(name, value) for name, value in arrays.items()}
    header, order = encode_header(checked, metadata)
    prefix = len(header).to_bytes(8, "little") + header
    size = len(prefix) + sum(checked[name].nbytes for name in order)

    def pieces() -> Iterator[memoryview | bytes]:
        yield prefix
        for name in order:
            yield from _array_pieces(checked[name])

    return EncodedArrays(size=size, pieces=pieces())


@dataclass(frozen=True)
class WrittenArrays:
    """What :func:`write_arrays` wrote."""

    path: Path
    #: File size in bytes.
    size: int
    #: Hex XXH3-128 checksum of the whole file (``shoal.checksum``),
    #: computed while writing (no second read).
    checksum: str


def write_arrays(
    path: str | os.PathLike[str],
    arrays: Mapping[str, Any],
    metadata: Mapping[str, str] | None = None,
    *,
    durable: bool = True,
    reuse: str | os.PathLike[str] | None = None,
) -> WrittenArrays:
    """Write ``arrays`` to ``path`` atomically and return its size and checksum.

    Each array is streamed to a temporary file beside ``path`` (no
    concatenated copy of the model is built), which is fsynced and renamed
    into place: readers see the old file or the new one, never a torn one.
    The checksum is computed over the bytes as they are written, so a
    caller that needs it (a checkpoint, a transfer's trailer) never reads
    the file again. ``durable=False`` skips the fsyncs (still atomic against readers)
    for files that need not survive a power cut: a site's upload staging,
    the simulator's per-site results.

    ``reuse``: a file the caller is done with, on the same file system
    (e.g. a result already aggregated, about as big): it becomes the
    temporary file and is written over, so the write lands in pages the
    page cache already holds. A new file's pages are fresh memory, which on
    the bench VM made writing 100 MiB cost 0.3-0.4 s of CPU, not 0.04.
    Nothing may still read or map it. Where it cannot be moved, a new file
    is written as usual.
    """
    path = Path(path)
    encoded = encode_arrays(arrays, metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    reused = _reused_file(Path(reuse), path) if reuse is not None else None
    if reused is not None:
        tmp, f = reused
    else:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp, f = Path(tmp_name), os.fdopen(fd, "wb")
    hasher = checksum.Checksum()
    try:
        with f:
            for piece in encoded.pieces:
                hasher.update(piece)
                f.write(piece)
            f.truncate()  # a reused file may have been longer
            if durable:
                f.flush()
                os.fsync(f.fileno())
            size = f.tell()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        _fsync_dir(path.parent)
    return WrittenArrays(path=path, size=size, checksum=hasher.hexdigest())


def _reused_file(old: Path, path: Path) -> tuple[Path, BinaryIO] | None:
    """``old`` moved beside ``path`` under a temporary name and opened for
    writing over; None if it cannot be."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_reuse_names)}.tmp")
    try:
        os.rename(old, tmp)
    except OSError:  # gone, or on another file system
        return None
    try:
        os.chmod(tmp, 0o600)  # as a new one from mkstemp
        return tmp, open(tmp, "r+b")  # noqa: SIM115 - closed by the caller
    except OSError:
        tmp.unlink(missing_ok=True)
        return None


_reuse_names = itertools.count()


def save_arrays(
    path: str | os.PathLike[str],
    arrays: Mapping[str, Any],
    metadata: Mapping[str, str] | None = None,
    *,
    durable: bool = True,
) -> Path:
    """Write ``arrays`` to ``path`` atomically; returns the path (see :func:`write_arrays`)."""
    return write_arrays(path, arrays, metadata, durable=durable).path


def sync_file(path: str | os.PathLike[str]) -> None:
    """Make a file written with ``durable=False`` durable: its bytes, then the
    rename that put it in place."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform.
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ArrayFormatError(f"header: name {key!r} appears more than once")
        out[key] = value
    return out


def _nonneg_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def decode_header(raw: bytes, data_bytes: int | None = None) -> Header:
    """Parse and validate a JSON header (the bytes between length and data).

    With ``data_bytes`` (the length of the data region that follows), also
    checks that the arrays cover it exactly. Raises ArrayFormatError with the
    reason on anything else than a well-formed header.
    """
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArrayFormatError(f"header is not valid UTF-8: {exc}") from None
    if not text.startswith("{"):
        raise ArrayFormatError("header is not a JSON object")
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates)
    except ArrayFormatError:
        raise
    except (ValueError, RecursionError) as exc:
        raise ArrayFormatError(f"header is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ArrayFormatError("header is not a JSON object")
    metadata: dict[str, str] = {}
    arrays: dict[str, ArraySpec] = {}
    for name, entry in doc.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise ArrayFormatError("header: __metadata__ must map strings to strings")
            metadata = dict(entry)
            continue
        arrays[name] = _decode_entry(name, entry)
    _check_layout(arrays, data_bytes)
    return Header(arrays=arrays, metadata=metadata)


def _decode_entry(name: str, entry: object) -> ArraySpec:
    if not isinstance(entry, dict):
        raise ArrayFormatError(f"array {name!r}: header entry is not an object")
    extra = set(entry) - {"dtype", "shape", "data_offsets"}
    if extra:
        raise ArrayFormatError(f"array {name!r}: unknown header fields {sorted(extra)}")
    code = entry.get("dtype")
    if not isinstance(code, str):
        raise ArrayFormatError(f"array {name!r}: missing or non-string dtype")
    if code in _UNSUPPORTED:
        raise ArrayFormatError(f"array {name!r}: dtype {code} is not supported by numpy")
    if code in _ML_DTYPES:
        dtype = _ml_dtype(code)
    elif code in _DTYPES:
        dtype = _DTYPES[code]
    else:
        raise ArrayFormatError(f"array {name!r}: unknown dtype {code!r}")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(_nonneg_int(d) for d in shape):
        raise ArrayFormatError(f"array {name!r}: shape must be a list of integers >= 0")
    offsets = entry.get("data_offsets")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_nonneg_int(o) for o in offsets)
    ):
        raise ArrayFormatError(f"array {name!r}: data_offsets must be two integers >= 0")
    begin, end = offsets
    if end < begin:
        raise ArrayFormatError(f"array {name!r}: data_offsets end {end} is before begin {begin}")
    expected = math.prod(shape) * dtype.itemsize
    if expected != end - begin:
        raise ArrayFormatError(
            f"array {name!r}: shape {shape} x {dtype.itemsize} bytes = {expected} bytes, "
            f"but data_offsets span {end - begin}"
        )
    return ArraySpec(dtype=dtype.name, shape=tuple(shape), begin=begin, end=end)


def _check_layout(arrays: Mapping[str, ArraySpec], data_bytes: int | None) -> None:
    pos = 0
    # Empty arrays occupy no bytes; sorting them first keeps the walk simple.
    for name, spec in sorted(arrays.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if spec.begin < pos:
            raise ArrayFormatError(f"array {name!r}: data_offsets overlap another array")
        if spec.begin > pos:
            raise ArrayFormatError(
                f"array {name!r}: gap before data_offsets {spec.begin} (arrays must be contiguous)"
            )
        pos = spec.end
    if data_bytes is None:
        return
    if pos > data_bytes:
        raise ArrayFormatError(
            f"file is truncated: arrays need {pos} data bytes, only {data_bytes} present"
        )
    if pos < data_bytes:
        raise ArrayFormatError(
            f"arrays do not cover the data: {data_bytes - pos} trailing bytes after offset {pos}"
        )


def read_header(f: BinaryIO, file_size: int) -> tuple[Header, int]:
    """Read and validate the header of an open file; returns it and the data start."""
    prefix = f.read(8)
    if len(prefix) < 8:
        raise ArrayFormatError(f"file is truncated: {file_size} bytes, no 8-byte header length")
    n = int.from_bytes(prefix, "little")
    if n == 0:
        raise ArrayFormatError("header length is 0")
    if n > MAX_HEADER_BYTES:
        raise ArrayFormatError(f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
    if 8 + n > file_size:
        raise ArrayFormatError(
            f"header length {n} runs beyond the end of the file ({file_size} bytes)"
        )
    raw = f.read(n)
    if len(raw) != n:
        raise ArrayFormatError("file is truncated inside the header")
    return decode_header(raw, data_bytes=file_size - 8 - n), 8 + n


def load_arrays(path: str | os.PathLike[str], *, mmap: bool = True) -> dict[str, np.ndarray]:
    """Read a file written by :func:`save_arrays` (or by safetensors).

    With ``mmap=True`` (the default) the arrays are read-only views of a
    memory map of the file: nothing is copied until touched. With
    ``mmap=False`` they are ordinary writable arrays read into memory.
    """
    path = Path(path)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, after mapping
    except FileNotFoundError:
        raise ArrayFormatError(f"{path}: no such file") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        try:
            header, start = read_header(f, size)
        except ArrayFormatError as exc:
            raise ArrayFormatError(f"{path}: {exc}") from None
        if not mmap:
            out: dict[str, np.ndarray] = {}
            for name, spec in header.arrays.items():
                arr = np.empty(spec.shape, dtype=_numpy_dtype(spec.dtype))
                f.seek(start + spec.begin)
                view = _bytes_view(arr) if arr.size else memoryview(b"")
                if arr.size and f.readinto(view) != spec.end - spec.begin:
                    raise ArrayFormatError(f"{path}: file is truncated inside {name!r}")
                out[name] = arr
            return out
        mm = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_READ)
    return _views(mm, header, start)


def _views(buffer: Any, header: Header, start: int) -> dict[str, np.ndarray]:
    """Read-only arrays over ``buffer`` (a file's bytes from offset 0)."""
    out: dict[str, np.ndarray] = {}
    for name, spec in header.arrays.items():
        dtype = _numpy_dtype(spec.dtype)
        count = math.prod(spec.shape)
        if count == 0:
            arr = np.empty(spec.shape, dtype=dtype)
            arr.flags.writeable = False
        else:
            arr = np.frombuffer(buffer, dtype=dtype, count=count, offset=start + spec.begin)
        out[name] = arr.reshape(spec.shape)
    return out


def arrays_from_bytes(data: bytes | bytearray | memoryview) -> dict[str, np.ndarray]:
    """Decode a whole array file held in memory; the arrays are views of
    ``data`` (no copy), writable only if ``data`` is."""
    # BytesIO copies a memoryview it is given: hand it the header's bytes only
    # (read_header checks the length; a bad one stops it before the header).
    view = memoryview(data)
    n = int.from_bytes(view[:8], "little")
    header, start = read_header(io.BytesIO(view[: 8 + min(n, MAX_HEADER_BYTES)]), len(view))
    return _views(data, header, start)


def array_specs(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{name: (dtype name, shape)}`` of ``arrays``, e.g. ``{"w": ("float32", (2, 3))}``."""
    return {name: (np.asarray(a).dtype.name, tuple(np.shape(a))) for name, a in arrays.items()}


def check_compatible(
    reference: Mapping[str, tuple[str, tuple[int, ...]]],
    arrays: Mapping[str, np.ndarray],
) -> None:
    """Raise ArrayFormatError unless ``arrays`` has exactly the names, dtypes and
    shapes of ``reference`` (from :func:`array_specs`); the message names the
    first mismatching array."""
    missing = [n for n in reference if n not in arrays]
    if missing:
        raise ArrayFormatError(f"array {missing[0]!r} is missing ({len(missing)} missing)")
    extra = [n for n in arrays if n not in reference]
    if extra:
        raise ArrayFormatError(f"array {extra[0]!r} is not in the model ({len(extra)} unexpected)")
    for name, (dtype, shape) in reference.items():
        arr = arrays[name]
        if tuple(arr.shape) != tuple(shape):
            raise ArrayFormatError(
                f"array {name!r}: shape {tuple(arr.shape)} differs from the model's {tuple(shape)}"
            )
        if arr.dtype.name != dtype:
            raise ArrayFormatError(
                f"array {name!r}: dtype {arr.dtype.name} differs from the model's {dtype}"
            )


def check_finite(arrays: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]]) -> None:
    """Raise ArrayFormatError naming the first floating array (bfloat16
    included) holding NaN or Inf.

    Scans in slabs, so a memory-mapped layer is never copied whole, into
    one buffer of flags: a fresh one per slab was a fresh mapping per slab
    (daemons and workflows map every block of 4 MiB or more, see
    ``shoal._memory``), and faulting it in cost more than the scan.
    """
    items = arrays.items() if isinstance(arrays, Mapping) else arrays
    flags: np.ndarray | None = None
    for name, arr in items:
        if not is_floating(arr.dtype) or arr.size == 0:
            continue
        flat = arr.reshape(-1)
        step = max(1, _CHUNK_BYTES // arr.dtype.itemsize)
        if flags is None or flags.shape[0] < min(step, flat.shape[0]):
            flags = np.empty(min(step, flat.shape[0]), dtype=bool)
        for i in range(0, flat.shape[0], step):
            slab = flat[i : i + step]
            if not np.isfinite(slab, out=flags[: slab.shape[0]]).all():
                raise ArrayFormatError(f"array {name!r} contains NaN or Inf")
