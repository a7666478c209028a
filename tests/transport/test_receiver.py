"""The push-style PayloadReceiver and the async (grpc.aio) receive paths built on
it: they accept what the sync paths accept and refuse what they refuse, with the
same messages, and a refused payload leaves no file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from shoal import checksum
from shoal._proto import shoal_pb2 as pb
from shoal.errors import IntegrityError, TransportError
from shoal.transport import PayloadHeader, frames_from_bytes, read_header, receive_to_file
from shoal.transport.frames import (
    PayloadReceiver,
    WireFrame,
    read_header_async,
    receive_bytes_async,
    receive_to_file_async,
)

DATA = bytes(range(256)) * 1000


def _frames(data: bytes, *, announce: int, trailer: bool = True, sha: str | None = None) -> list:
    frames: list = [pb.Frame(header=PayloadHeader(kind="blob", size=announce).to_pb())]
    frames += [pb.Frame(data=data[i : i + 4096]) for i in range(0, len(data), 4096)]
    if trailer:
        frames.append(pb.Frame(trailer=pb.Trailer(xxh3_128=sha or checksum.of_bytes(data))))
    return frames


BAD = {
    "truncated": (_frames(DATA, announce=len(DATA), trailer=False), "truncated"),
    "short": (_frames(DATA[:-1], announce=len(DATA)), "announced"),
    "long": (_frames(DATA + b"x", announce=len(DATA)), "longer"),
    "hash": (_frames(DATA, announce=len(DATA), sha="0" * 32), "checksum"),
    "header inside": (
        [*_frames(DATA, announce=len(DATA))[:2], pb.Frame(header=pb.Header(kind="x"))],
        "unexpected 'header'",
    ),
    "too large": (_frames(DATA, announce=len(DATA)), "exceeds the limit"),
}


async def _aiter(frames: Iterable[WireFrame]) -> AsyncIterator[WireFrame]:
    for f in frames:
        await asyncio.sleep(0)  # a real stream suspends between messages
        yield f


def test_receiver_fed_frame_by_frame_checks_like_the_pull_path(tmp_path: Path) -> None:
    frames = list(
        frames_from_bytes(PayloadHeader(kind="blob"), DATA, chunk_size=4096, inline_max=0)
    )
    header = read_header(iter(frames))
    parts: list[bytes] = []
    rx = PayloadReceiver(header, lambda chunk: parts.append(bytes(chunk)))
    assert not rx.done
    for frame in frames[1:]:
        rx.feed(frame)
    assert rx.done and rx.received == len(DATA)
    assert rx.finish() == checksum.of_bytes(DATA)
    assert b"".join(parts) == DATA
    # The same frames pulled by receive_to_file give the same payload.
    got = receive_to_file(header, iter(frames[1:]), tmp_path / "x.bin", max_size=len(DATA))
    assert got.checksum == rx.finish()


def test_an_inline_payload_is_received_without_reading_the_stream(tmp_path: Path) -> None:
    (first,) = frames_from_bytes(PayloadHeader(kind="blob"), b"small")
    header = read_header(iter([first]))
    assert PayloadReceiver(header, lambda chunk: None).done

    async def must_not_be_read() -> AsyncIterator[WireFrame]:
        raise AssertionError("read")
        yield  # pragma: no cover - makes this an async generator

    async def main() -> None:
        assert await receive_bytes_async(header, must_not_be_read(), max_size=10) == b"small"
        await receive_to_file_async(header, must_not_be_read(), tmp_path / "s.bin", max_size=10)

    asyncio.run(main())
    assert (tmp_path / "s.bin").read_bytes() == b"small"


def test_async_round_trip_to_file_and_memory(tmp_path: Path) -> None:
    frames = list(
        frames_from_bytes(PayloadHeader(kind="blob"), DATA, chunk_size=65536, inline_max=0)
    )

    async def main() -> None:
        stream = _aiter(frames)
        header = await read_header_async(stream)
        got = await receive_to_file_async(header, stream, tmp_path / "o" / "f.bin", max_size=10**6)
        assert got.checksum == checksum.of_bytes(DATA)
        stream = _aiter(frames)
        header = await read_header_async(stream)
        assert await receive_bytes_async(header, stream, max_size=len(DATA)) == DATA

    asyncio.run(main())
    assert (tmp_path / "o" / "f.bin").read_bytes() == DATA
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["f.bin"]


@pytest.mark.parametrize("case", sorted(BAD))
def test_async_paths_refuse_bad_streams_and_leave_no_file(tmp_path: Path, case: str) -> None:
    frames, message = BAD[case]
    limit = len(DATA) - 1 if case == "too large" else 10 * len(DATA)

    async def main() -> None:
        for receive in (
            lambda h, s: receive_to_file_async(h, s, tmp_path / "d" / "x.bin", max_size=limit),
            lambda h, s: receive_bytes_async(h, s, max_size=limit),
        ):
            stream = _aiter(frames)
            header = await read_header_async(stream)
            with pytest.raises(IntegrityError, match=message):
                await receive(header, stream)

    (tmp_path / "d").mkdir(exist_ok=True)
    asyncio.run(main())
    assert list((tmp_path / "d").iterdir()) == []


def test_read_header_async_refuses_what_read_header_refuses() -> None:
    async def main() -> None:
        with pytest.raises(TransportError, match="no header"):
            await read_header_async(_aiter([]))
        with pytest.raises(TransportError, match="start with a header"):
            await read_header_async(_aiter([pb.Frame(data=b"x")]))

    asyncio.run(main())


def test_two_uploads_to_one_file_at_once_do_not_share_a_partial_file(tmp_path: Path) -> None:
    # Interleaved on one loop, as two calls of the grpc.aio server are.
    a = list(frames_from_bytes(PayloadHeader(kind="blob"), DATA, chunk_size=4096, inline_max=0))
    b = list(
        frames_from_bytes(PayloadHeader(kind="blob"), DATA[::-1], chunk_size=4096, inline_max=0)
    )
    dest = tmp_path / "r" / "site.bin"

    async def one(frames: list) -> str:
        stream = _aiter(frames)
        header = await read_header_async(stream)
        return (await receive_to_file_async(header, stream, dest, max_size=len(DATA))).checksum

    async def main() -> list[str]:
        return list(await asyncio.gather(one(a), one(b)))

    digests = asyncio.run(main())
    assert checksum.of_bytes(dest.read_bytes()) in digests
    assert [p.name for p in dest.parent.iterdir()] == ["site.bin"]
