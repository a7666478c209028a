"""Chunked payload frames without a network: round trips and every way a stream can lie."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from shoal import checksum
from shoal._proto import shoal_pb2 as pb
from shoal.errors import IntegrityError, TransportError
from shoal.transport import (
    PayloadHeader,
    frames_from_bytes,
    frames_from_file,
    read_header,
    receive_bytes,
    receive_to_file,
    receive_to_memory,
)
from shoal.transport.frames import (
    INLINE_MAX,
    MemoryPool,
    WireFrame,
    data_frame,
    decode_frame,
    encode_frame,
    frames_from_pieces,
)

DATA = bytes(range(256)) * 1000  # 256,000 bytes: several chunks of 64 KiB


def _stream(frames: Iterator[WireFrame]) -> tuple[PayloadHeader, Iterator[WireFrame]]:
    it = iter(frames)
    return read_header(it), it


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_file_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(DATA)
    header = PayloadHeader(kind="task", job_id="j1", task_id="t1", meta={"round": 3})
    got_header, frames = _stream(frames_from_file(header, src, chunk_size=65536, inline_max=0))
    assert got_header.size == len(DATA)
    assert got_header.meta == {"round": 3}
    assert (got_header.kind, got_header.job_id, got_header.task_id) == ("task", "j1", "t1")
    got = receive_to_file(got_header, frames, tmp_path / "out" / "dst.bin", max_size=len(DATA))
    assert (tmp_path / "out" / "dst.bin").read_bytes() == DATA
    assert got.size == len(DATA)
    assert got.checksum == checksum.of_bytes(DATA)
    assert _leftovers(tmp_path / "out") == ["dst.bin"]


@pytest.mark.parametrize("receive", [receive_bytes, receive_to_memory])
def test_memory_round_trip_and_empty_payload(receive: object) -> None:
    for data in (DATA, b"", DATA[:100]):  # chunked, empty, inline
        header, frames = _stream(
            frames_from_bytes(PayloadHeader(kind="blob"), data, chunk_size=4096)
        )
        assert bytes(receive(header, frames, max_size=len(DATA))) == data  # type: ignore[operator]


def test_receive_to_memory_gives_writable_memory_of_the_exact_size() -> None:
    header, frames = _stream(frames_from_bytes(PayloadHeader(kind="blob"), DATA, inline_max=0))
    got = receive_to_memory(header, frames, max_size=len(DATA))
    assert (len(got), got.readonly) == (len(DATA), False)
    got[0] = 7  # the arrays decoded from a task may be trained in place


def test_memory_pool_refills_a_mapping_only_once_nothing_views_it() -> None:
    pool = MemoryPool()

    def receive(data: bytes) -> memoryview:
        header, frames = _stream(frames_from_bytes(PayloadHeader(kind="blob"), data, inline_max=0))
        return receive_to_memory(header, frames, max_size=len(data), pool=pool)

    other = bytes(reversed(DATA))
    first = receive(DATA)
    addresses = {_address(first)}
    arrays = np.frombuffer(first, dtype=np.uint8)  # as a task's arrays view it
    del first
    # Still viewed: the next payload gets memory of its own, the first is intact.
    second = receive(other)
    assert bytes(arrays) == DATA and bytes(second) == other
    addresses.add(_address(second))
    assert len(addresses) == 2
    del arrays, second
    # Nothing views either now: the next payload fills one of them again.
    third = receive(DATA)
    assert bytes(third) == DATA and _address(third) in addresses
    # A different size is never squeezed into one.
    assert len(receive(DATA[:1000])) == 1000


def _address(view: memoryview) -> int:
    return np.frombuffer(view, dtype=np.uint8).ctypes.data


def test_file_and_bytes_frames_agree(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(DATA)
    header = PayloadHeader(kind="blob")
    a = list(frames_from_file(header, src, chunk_size=10_000))
    b = list(frames_from_bytes(header, DATA, chunk_size=10_000))
    assert a == b


def _frames(
    data: bytes, *, announce: int, sha: str | None = None, trailer: bool = True
) -> Iterator[pb.Frame]:
    yield pb.Frame(header=PayloadHeader(kind="blob", size=announce).to_pb())
    for i in range(0, len(data), 4096):
        yield pb.Frame(data=data[i : i + 4096])
    if trailer:
        yield pb.Frame(trailer=pb.Trailer(xxh3_128=sha or checksum.of_bytes(data)))


#: case -> (a fresh bad stream, what the error says)
BAD_STREAMS = {
    "truncated: no trailer": (
        lambda: _frames(DATA, announce=len(DATA), trailer=False),
        "truncated",
    ),
    "shorter than announced": (lambda: _frames(DATA[:-1], announce=len(DATA)), "announced"),
    "longer than announced": (lambda: _frames(DATA + b"x", announce=len(DATA)), "longer"),
    "checksum mismatch": (lambda: _frames(DATA, announce=len(DATA), sha="0" * 32), "checksum"),
}


def _old_build_stream() -> Iterator[WireFrame]:
    """A stream from a build that put a SHA-256 in the trailer's field 1 (now
    reserved): its trailer arrives with no checksum."""
    for frame in _frames(DATA, announce=len(DATA), trailer=False):
        yield decode_frame(encode_frame(frame))
    digest = hashlib.sha256(DATA).hexdigest().encode()
    trailer = bytes([0x0A, len(digest)]) + digest  # Trailer{1: digest}
    yield decode_frame(bytes([0x1A, len(trailer)]) + trailer)  # Frame{trailer}


def test_a_trailer_of_an_older_build_is_refused_by_name(tmp_path: Path) -> None:
    header, frames = _stream(_old_build_stream())
    with pytest.raises(IntegrityError, match="no XXH3-128 checksum"):
        receive_to_file(header, frames, tmp_path / "dst.bin", max_size=len(DATA))
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("case", sorted(BAD_STREAMS))
def test_bad_stream_raises_and_leaves_no_file(tmp_path: Path, case: str) -> None:
    make, message = BAD_STREAMS[case]
    header, frames = _stream(make())
    with pytest.raises(IntegrityError, match=message):
        receive_to_file(header, frames, tmp_path / "dst.bin", max_size=10 * len(DATA))
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("receive", [receive_bytes, receive_to_memory])
@pytest.mark.parametrize("case", sorted(BAD_STREAMS))
def test_bad_stream_in_memory(case: str, receive: object) -> None:
    make, message = BAD_STREAMS[case]
    header, frames = _stream(make())
    with pytest.raises(IntegrityError, match=message):
        receive(header, frames, max_size=10 * len(DATA))  # type: ignore[operator]


def test_over_the_limit_refused_before_reading(tmp_path: Path) -> None:
    header, frames = _stream(_frames(DATA, announce=len(DATA)))
    with pytest.raises(IntegrityError, match="exceeds the limit"):
        receive_to_file(header, frames, tmp_path / "dst.bin", max_size=len(DATA) - 1)
    assert _leftovers(tmp_path) == []
    for receive in (receive_bytes, receive_to_memory):
        header, frames = _stream(_frames(DATA, announce=len(DATA)))
        with pytest.raises(IntegrityError, match="outside|exceeds the limit"):
            receive(header, frames, max_size=len(DATA) - 1)
        # Refused on the header alone: no frame after it was read.
        assert next(frames).data == DATA[:4096]


def test_unknown_size_refused(tmp_path: Path) -> None:
    header, frames = _stream(_frames(DATA, announce=-1))
    with pytest.raises(IntegrityError, match="announce its size"):
        receive_to_file(header, frames, tmp_path / "dst.bin", max_size=len(DATA))


def test_second_header_inside_payload_refused(tmp_path: Path) -> None:
    def frames() -> Iterator[pb.Frame]:
        yield pb.Frame(header=PayloadHeader(kind="blob", size=4).to_pb())
        yield pb.Frame(header=PayloadHeader(kind="blob", size=4).to_pb())

    header, it = _stream(frames())
    with pytest.raises(IntegrityError, match="unexpected 'header'"):
        receive_to_file(header, it, tmp_path / "dst.bin", max_size=4)
    assert _leftovers(tmp_path) == []


def test_existing_file_untouched_by_a_failed_receive(tmp_path: Path) -> None:
    dest = tmp_path / "dst.bin"
    dest.write_bytes(b"previous")
    header, frames = _stream(_frames(DATA, announce=len(DATA), sha="f" * 32))
    with pytest.raises(IntegrityError):
        receive_to_file(header, frames, dest, max_size=len(DATA))
    assert dest.read_bytes() == b"previous"
    assert _leftovers(tmp_path) == ["dst.bin"]


def test_stream_must_start_with_a_header() -> None:
    with pytest.raises(TransportError, match="no header"):
        read_header(iter([]))
    with pytest.raises(TransportError, match="start with a header"):
        read_header(iter([pb.Frame(data=b"x")]))


def test_header_meta_must_be_a_json_object() -> None:
    with pytest.raises(TransportError, match="not JSON"):
        PayloadHeader.from_pb(pb.Header(kind="blob", meta_json="{nope"))
    with pytest.raises(TransportError, match="JSON object"):
        PayloadHeader.from_pb(pb.Header(kind="blob", meta_json="[1]"))


# -- the wire codec: hand-built data frames are protobuf's own bytes ----------


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_383, 16_384, 1 << 20])
def test_data_frame_is_protobufs_encoding(size: int) -> None:
    chunk = bytes(range(256)) * (size // 256) + bytes(size % 256)
    wire = data_frame(memoryview(chunk))
    assert wire == pb.Frame(data=chunk).SerializeToString()
    assert pb.Frame.FromString(wire).data == chunk
    got = decode_frame(wire)
    assert isinstance(got, memoryview) and bytes(got) == chunk


def test_decode_frame_parses_headers_trailers_and_odd_layouts_with_protobuf() -> None:
    header = pb.Frame(header=PayloadHeader(kind="blob", size=3).to_pb())
    trailer = pb.Frame(trailer=pb.Trailer(xxh3_128="ab"))
    for frame in (header, trailer):
        assert decode_frame(encode_frame(frame)) == frame
    # A data field followed by more bytes (another field): not the fast path,
    # protobuf decides (here: the later trailer field wins the oneof).
    odd = data_frame(b"xyz") + trailer.SerializeToString()
    assert decode_frame(odd) == pb.Frame.FromString(odd)
    assert encode_frame(b"raw") == b"raw"


def test_senders_yield_wire_bytes_receivers_accept_both(tmp_path: Path) -> None:
    # A stream from a generated-stub peer (pb.Frame data frames) and one of
    # ours (pre-built bytes) are received the same way.
    ours = [decode_frame(encode_frame(f)) for f in frames_from_bytes(PayloadHeader(kind="b"), DATA)]
    theirs = list(_frames(DATA, announce=len(DATA)))
    for frames in (ours, theirs):
        it = iter(frames)
        assert receive_bytes(read_header(it), it, max_size=len(DATA)) == DATA


# -- small payloads ride in their header ---------------------------------------


def test_small_payloads_are_one_inline_frame_and_large_ones_are_chunked(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(DATA)
    small = list(frames_from_file(PayloadHeader(kind="t"), src))
    assert len(small) == 1 and isinstance(small[0], pb.Frame)
    assert small[0].header.inline_data == DATA and small[0].header.size == len(DATA)
    chunked = list(frames_from_file(PayloadHeader(kind="t"), src, chunk_size=65536, inline_max=0))
    assert len(chunked) == 2 + 4  # header, 4 chunks, trailer
    for frames in (small, chunked):
        header, it = _stream(iter(frames))
        got = receive_to_file(header, it, tmp_path / "out.bin", max_size=len(DATA))
        assert (tmp_path / "out.bin").read_bytes() == DATA
        assert got.checksum == checksum.of_bytes(DATA)


def _inline_header(
    data: bytes, *, size: int | None = None, sha: str | None = None
) -> PayloadHeader:
    h = PayloadHeader(kind="blob").with_payload(len(data), data)
    return PayloadHeader(
        h.kind,
        size=len(data) if size is None else size,
        inline=data,
        inline_checksum=sha or h.inline_checksum,
    )


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (_inline_header(b"abc", sha=checksum.of_bytes(b"abd")), r"checksum \(XXH3-128\) mismatch"),
        (_inline_header(b"abc", size=4), "3 bytes, 4 were announced"),
        (_inline_header(b"x" * 100), "exceeds the limit"),
    ],
)
def test_a_lying_inline_payload_is_refused_and_leaves_nothing(
    tmp_path: Path, header: PayloadHeader, message: str
) -> None:
    # Through the wire encoding, as a receiver sees it.
    header = PayloadHeader.from_pb(
        pb.Frame.FromString(encode_frame(pb.Frame(header=header.to_pb()))).header
    )
    with pytest.raises(IntegrityError, match=message):
        receive_to_file(header, iter(()), tmp_path / "out" / "x.bin", max_size=50)
    with pytest.raises(IntegrityError):
        receive_bytes(header, iter(()), max_size=50)
    assert not (tmp_path / "out").exists() or _leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("inline_max", [0, INLINE_MAX])
def test_frames_from_pieces_hash_on_the_way_and_refuse_a_wrong_size(inline_max: int) -> None:
    pieces = [DATA[:1000], memoryview(DATA)[1000:200_000], DATA[200_000:]]
    frames = frames_from_pieces(
        PayloadHeader(kind="result"), len(DATA), pieces, chunk_size=65536, inline_max=inline_max
    )
    header, it = _stream(frames)
    assert receive_bytes(header, it, max_size=len(DATA)) == DATA
    short = frames_from_pieces(
        PayloadHeader(kind="result"), len(DATA) + 1, [DATA], inline_max=inline_max
    )
    with pytest.raises(TransportError, match="were announced"):
        list(short)
