"""Fuzzing the decoders that read what peers send: chunked payload streams
(shoal.transport.frames) and array files/headers (shoal.arrays). Whatever the
input, only shoal's own IntegrityError/TransportError/ArrayFormatError escape.

The job-archive reader is fuzzed in tests/jobs/test_archive.py.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal import checksum
from shoal._proto import shoal_pb2 as pb
from shoal.arrays import decode_header, load_arrays, save_arrays
from shoal.errors import ArrayFormatError, IntegrityError, TransportError
from shoal.transport import PayloadHeader, read_header
from shoal.transport.frames import receive_bytes, receive_to_file

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_meta = st.one_of(
    st.just(""),
    st.text(max_size=40),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3).map(json.dumps),
    st.sampled_from(["[]", "null", "{", '{"site": 1}', "1e999"]),
)
_header = st.builds(
    lambda kind, size, meta: pb.Frame(
        header=pb.Header(kind=kind, job_id="j", task_id="t", size=size, meta_json=meta)
    ),
    st.sampled_from(["result", "task", "", "\0"]),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    _meta,
)
_data = st.binary(max_size=64).map(lambda b: pb.Frame(data=b))
_trailer = st.one_of(
    st.text(max_size=70).map(lambda s: pb.Frame(trailer=pb.Trailer(xxh3_128=s))),
    st.just(pb.Frame()),  # a frame with no body at all
)
_frames = st.lists(st.one_of(_header, _data, _trailer), max_size=8)


def _valid_stream(data: bytes) -> list[pb.Frame]:
    h = PayloadHeader("result", "j", "t", len(data), {})
    return [
        pb.Frame(header=h.to_pb()),
        pb.Frame(data=data),
        pb.Frame(trailer=pb.Trailer(xxh3_128=checksum.of_bytes(data))),
    ]


@FUZZ
@given(frames=_frames, to_file=st.booleans())
def test_random_frame_sequences_only_raise_transport_errors(frames, to_file):
    it = iter(frames)
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "out.bin"
        try:
            header = read_header(it)
            if to_file:
                got = receive_to_file(header, it, dest, max_size=1024)
                assert dest.read_bytes().__len__() == got.size == header.size
            else:
                assert len(receive_bytes(header, it, max_size=1024)) == header.size
        except (IntegrityError, TransportError):
            # Refused: nothing is left behind, not even the partial file.
            assert list(Path(tmp).iterdir()) == []


@FUZZ
@given(
    data=st.binary(max_size=200),
    cut=st.integers(min_value=0, max_value=3),
    flip=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=3),
)
def test_mutated_valid_streams_are_refused_or_exact(data, cut, flip):
    frames = _valid_stream(data)
    frames = frames[: len(frames) - cut] if cut < 3 else frames
    raw = bytearray(frames[1].data) if len(frames) > 1 else bytearray()
    for pos, val in flip:
        if raw:
            raw[pos % len(raw)] = val
    if len(frames) > 1:
        frames[1] = pb.Frame(data=bytes(raw))
    try:
        out = receive_bytes(read_header(iter(frames)), iter(frames[1:]), max_size=1024)
    except (IntegrityError, TransportError):
        return
    assert out == data  # accepted only when nothing was lost or changed


def _valid_array_file() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.safetensors"
        save_arrays(
            path,
            {
                "w": np.arange(12, dtype=np.float32).reshape(3, 4),
                "b": np.array([1.5, -2.0]),
                "i": np.array([1, 2, 3], dtype=np.int64),
            },
        )
        return path.read_bytes()


VALID = _valid_array_file()


@FUZZ
@given(raw=st.binary(max_size=300), data_bytes=st.one_of(st.none(), st.integers(-5, 10**6)))
def test_decode_header_on_random_bytes(raw, data_bytes):
    with contextlib.suppress(ArrayFormatError):
        decode_header(raw, data_bytes)


@FUZZ
@given(
    header=st.dictionaries(
        st.text(max_size=6),
        st.one_of(
            st.fixed_dictionaries(
                {
                    "dtype": st.sampled_from(["F32", "F64", "I64", "U8", "BOOL", "X", ""]),
                    "shape": st.lists(st.integers(-2, 2**40), max_size=3),
                    "data_offsets": st.lists(st.integers(-2, 2**40), max_size=3),
                }
            ),
            st.integers(),
            st.text(max_size=5),
        ),
        max_size=3,
    ),
    data_bytes=st.integers(0, 4096),
)
def test_decode_header_on_structured_json(header, data_bytes):
    with contextlib.suppress(ArrayFormatError):
        decode_header(json.dumps(header).encode(), data_bytes)


@FUZZ
@given(
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=4),
    cut=st.integers(min_value=0, max_value=len(VALID)),
    extra=st.binary(max_size=16),
    mmap=st.booleans(),
)
def test_load_arrays_on_mutated_files(flips, cut, extra, mmap):
    raw = bytearray(VALID[:cut] + extra)
    for pos, val in flips:
        if raw:
            raw[pos % len(raw)] = val
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.safetensors"
        path.write_bytes(bytes(raw))
        try:
            arrays = load_arrays(path, mmap=mmap)
        except ArrayFormatError:
            return
        for arr in arrays.values():  # what loads is fully readable
            np.asarray(arr).tobytes()
            del arr
        del arrays
