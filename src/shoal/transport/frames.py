"""Chunked payload streams: Header, data chunks, Trailer with a checksum.

Payloads (weights, job packages, results, logs) never travel as one message,
so gRPC's message cap does not limit model size and memory per transfer is one
chunk. The receiver writes chunks straight to a temporary file (or memory of
its own), checksumming as it goes (XXH3-128, see ``shoal.checksum``), and
only renames it into place once size and checksum match: a partial or
corrupted upload never becomes visible.

Data frames skip protobuf's object layer. A sender builds the wire bytes of
``Frame{data}`` itself (tag, length, chunk: one copy, straight from the file's
pages) and a receiver gets the chunk as a memoryview into the message gRPC
handed over (no copy), where going through ``pb.Frame`` cost two copies on
send and one per ``frame.data`` access on receipt. The bytes on the wire are
the same ``Frame`` messages the .proto defines, so any protobuf peer
interoperates; :func:`encode_frame` and :func:`decode_frame` are the gRPC
(de)serializers that make this work, wired in by ``transport.services``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import mmap
import os
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from shoal import checksum as _checksum
from shoal._proto import shoal_pb2 as pb
from shoal.errors import IntegrityError, TransportError

__all__ = [
    "CHUNK_SIZE",
    "INLINE_MAX",
    "MAX_CHUNK_SIZE",
    "Frame",
    "MemoryPool",
    "PayloadHeader",
    "PayloadReceiver",
    "ReceivedPayload",
    "WireFrame",
    "data_frame",
    "decode_frame",
    "encode_frame",
    "frames_from_bytes",
    "frames_from_file",
    "frames_from_pieces",
    "human_bytes",
    "read_header",
    "read_header_async",
    "receive_bytes",
    "receive_bytes_async",
    "receive_to_file",
    "receive_to_file_async",
    "receive_to_memory",
]

#: Bytes per data frame. Large enough to amortise per-message cost, small
#: enough that a transfer holds a few MiB at most.
CHUNK_SIZE = 1 * 1024 * 1024
#: Largest frame a peer may send us (gRPC refuses bigger messages).
MAX_CHUNK_SIZE = 8 * 1024 * 1024
#: gRPC message cap: a chunk plus protobuf overhead.
MAX_MESSAGE_BYTES = MAX_CHUNK_SIZE + 64 * 1024
#: Payloads up to this size ride inside their header frame: one message per
#: transfer instead of header + data + trailer (each a gRPC round of its own,
#: which dominates a round's cost with a small model and many sites).
INLINE_MAX = 256 * 1024

#: What a payload stream carries, as a sender yields it: a ``pb.Frame``, or
#: the wire bytes of a data frame built by :func:`data_frame`.
Frame = pb.Frame | bytes
#: What a receiver iterates: a ``pb.Frame``, or a data frame's chunk as a
#: memoryview (from :func:`decode_frame`).
WireFrame = pb.Frame | memoryview

_DATA_TAG = bytes([(pb.Frame.DESCRIPTOR.fields_by_name["data"].number << 3) | 2])


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def data_frame(chunk: bytes | memoryview) -> bytes:
    """The wire bytes of ``Frame(data=chunk)``, built with one copy of ``chunk``."""
    return b"".join((_DATA_TAG, _varint(len(chunk)), chunk))


def encode_frame(frame: Frame) -> bytes:
    """gRPC serializer for Frame streams: pre-built data frames pass through."""
    if isinstance(frame, bytes):
        return frame
    return frame.SerializeToString()


def decode_frame(raw: bytes) -> WireFrame:
    """gRPC deserializer for Frame streams.

    A message holding nothing but a data field comes back as a memoryview of
    the chunk inside ``raw``; anything else (header, trailer, or a data frame
    another encoder laid out differently) is parsed by protobuf as usual.
    """
    if raw[:1] == _DATA_TAG:
        n = shift = 0
        i = 1
        while i < len(raw) and i <= 10:
            b = raw[i]
            n |= (b & 0x7F) << shift
            shift += 7
            i += 1
            if not b & 0x80:
                if i + n == len(raw):
                    return memoryview(raw)[i:]
                break
    return pb.Frame.FromString(raw)


def _body(frame: WireFrame | bytes) -> tuple[str, Any]:
    """(kind, value) of a received frame: ("data", chunk) | ("header", h) | ("trailer", t)."""
    if isinstance(frame, memoryview):
        return "data", frame
    if isinstance(frame, bytes):  # a sender's pre-built frame fed straight back in
        return _body(decode_frame(frame))
    which = frame.WhichOneof("body")
    if which == "data":
        return "data", frame.data  # one access: each one copies
    return str(which), getattr(frame, which) if which else None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


@dataclass(frozen=True)
class PayloadHeader:
    """What a payload is, in shoal's own terms (protobuf stays in here)."""

    kind: str
    job_id: str = ""
    task_id: str = ""
    size: int = -1
    meta: Mapping[str, Any] = field(default_factory=dict)
    #: The whole payload when it travelled inside the header (see INLINE_MAX).
    inline: bytes | None = field(default=None, repr=False)
    #: Hex XXH3-128 checksum of ``inline``, as the sender computed it.
    inline_checksum: str = ""

    def to_pb(self) -> pb.Header:
        h = pb.Header(
            kind=self.kind,
            job_id=self.job_id,
            task_id=self.task_id,
            size=self.size,
            meta_json=json.dumps(dict(self.meta)),
        )
        if self.inline is not None:
            h.inline_data = self.inline
            h.inline_xxh3_128 = self.inline_checksum
        return h

    @classmethod
    def from_pb(cls, h: pb.Header) -> PayloadHeader:
        try:
            # Strict JSON: NaN and Infinity are not JSON, and a peer's number
            # that is not finite must not reach metrics or the job store.
            meta = json.loads(h.meta_json, parse_constant=_no_constant) if h.meta_json else {}
        except (json.JSONDecodeError, ValueError) as exc:
            raise TransportError(f"payload header: meta_json is not JSON: {exc}") from exc
        if not isinstance(meta, dict):
            raise TransportError("payload header: meta_json must be a JSON object")
        inline = bytes(h.inline_data) if h.inline_xxh3_128 else None
        return cls(
            kind=h.kind,
            job_id=h.job_id,
            task_id=h.task_id,
            size=h.size,
            meta=meta,
            inline=inline,
            inline_checksum=h.inline_xxh3_128,
        )

    def with_payload(
        self, size: int, inline: bytes | None = None, *, checksum: str = ""
    ) -> PayloadHeader:
        """This header announcing ``size`` bytes, carrying them when ``inline``
        is given (``checksum``: theirs, when the caller already has it)."""
        digest = checksum or (_checksum.of_bytes(inline) if inline is not None else "")
        return PayloadHeader(self.kind, self.job_id, self.task_id, size, self.meta, inline, digest)


def _inline(header: PayloadHeader, data: bytes) -> pb.Frame:
    return pb.Frame(header=header.with_payload(len(data), data).to_pb())


def _payload_frames(header: PayloadHeader, frames: Iterable[WireFrame]) -> Iterable[WireFrame]:
    """The data and trailer frames of a payload: an inline one's are in its header."""
    if header.inline is None:
        return frames
    trailer = pb.Trailer(xxh3_128=header.inline_checksum)
    return (memoryview(header.inline), pb.Frame(trailer=trailer))


@dataclass(frozen=True)
class ReceivedPayload:
    header: PayloadHeader
    path: Path
    size: int
    #: Hex XXH3-128 checksum of the bytes received.
    checksum: str


def frames_from_file(
    header: PayloadHeader,
    path: Path,
    *,
    chunk_size: int = CHUNK_SIZE,
    checksum: str | None = None,
    inline_max: int = INLINE_MAX,
) -> Generator[Frame, None, None]:
    """Stream ``path`` as frames; the header's size is filled in from the file.

    ``checksum``: the file's checksum when the caller already has it
    (computed while the file was written); the receiver checks the bytes
    against it, so the check stays end to end while the sender skips a pass
    over the data.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= inline_max:
            yield _inline(header, f.read())
            return
        yield pb.Frame(header=header.with_payload(size).to_pb())
        digest = None if checksum else _checksum.Checksum()
        # One reused buffer: the file's bytes are copied into it, then once
        # more into the frame gRPC sends; nothing model-sized is held.
        buf = bytearray(min(chunk_size, size))
        view = memoryview(buf)
        while n := f.readinto(buf):
            chunk = view[:n]
            if digest is not None:
                digest.update(chunk)
            frame = data_frame(chunk)
            chunk.release()
            yield frame
    yield pb.Frame(trailer=pb.Trailer(xxh3_128=checksum or digest.hexdigest()))  # type: ignore[union-attr]


def frames_from_pieces(
    header: PayloadHeader,
    size: int,
    pieces: Iterable[bytes | memoryview],
    *,
    chunk_size: int = CHUNK_SIZE,
    inline_max: int = INLINE_MAX,
) -> Generator[Frame, None, None]:
    """Stream ``size`` bytes produced piece by piece (e.g. ``arrays.encode_arrays``),
    checksumming them on the way: no staging file, no whole-payload buffer.

    Raises TransportError, before the trailer, if the pieces do not add up to
    ``size`` (the receiver then sees a truncated stream and keeps nothing).
    """
    if size <= inline_max:
        data = b"".join(pieces)
        if len(data) != size:
            raise TransportError(f"payload produced {len(data)} bytes, {size} were announced")
        yield _inline(header, data)
        return
    yield pb.Frame(header=header.with_payload(size).to_pb())
    digest = _checksum.Checksum()
    sent = 0
    for piece in pieces:
        view = memoryview(piece)
        for i in range(0, len(view), chunk_size):
            chunk = view[i : i + chunk_size]
            sent += len(chunk)
            digest.update(chunk)
            yield data_frame(chunk)
    if sent != size:
        raise TransportError(f"payload produced {sent} bytes, {size} were announced")
    yield pb.Frame(trailer=pb.Trailer(xxh3_128=digest.hexdigest()))


def frames_from_bytes(
    header: PayloadHeader,
    data: bytes,
    *,
    chunk_size: int = CHUNK_SIZE,
    inline_max: int = INLINE_MAX,
) -> Iterator[Frame]:
    return frames_from_pieces(
        header, len(data), [data], chunk_size=chunk_size, inline_max=inline_max
    )


def read_header(frames: Iterator[WireFrame]) -> PayloadHeader:
    """Consume and decode the first frame, which must be a header."""
    try:
        first = next(frames)
    except StopIteration:
        raise TransportError("empty payload stream: no header") from None
    which, body = _body(first)
    if which != "header":
        raise TransportError("payload stream must start with a header")
    return PayloadHeader.from_pb(body)


def _receive_into(
    header: PayloadHeader, frames: Iterable[WireFrame], write: Callable[[Any], object]
) -> str:
    """Pass the payload's data chunks to ``write``, checksumming them; returns
    the checksum once size and trailer check out (IntegrityError otherwise)."""
    rx = PayloadReceiver(header, write)
    if not rx.done:
        for frame in frames:
            if rx.feed(frame):
                break
    return rx.finish()


def _check_size(header: PayloadHeader, max_size: int) -> None:
    if header.size < 0:
        raise IntegrityError("payload header must announce its size")
    if header.size > max_size:
        raise IntegrityError(f"payload of {header.size} bytes exceeds the limit of {max_size}")


class PayloadReceiver:
    """The checks of every receive path, fed one frame at a time (push-style),
    so a sync iterator and a ``grpc.aio`` stream are checked by the same code:

        rx = PayloadReceiver(header, write=f.write)
        if not rx.done:                  # an inline payload is done at once
            for frame in frames:         # or `async for`
                if rx.feed(frame):       # True once the trailer came
                    break
        checksum = rx.finish()

    ``write`` gets each data chunk (a memoryview it may not keep past the
    call unless it copies) once the chunk passed the size check. ``feed`` and
    ``finish`` raise IntegrityError for a frame out of place, more bytes than
    announced, a missing trailer, a short payload or a checksum mismatch.
    """

    def __init__(self, header: PayloadHeader, write: Callable[[Any], object]) -> None:
        self.header = header
        self.received = 0
        self._write = write
        self._digest = _checksum.Checksum()
        self._trailer: pb.Trailer | None = None
        for frame in _payload_frames(header, ()):  # an inline payload's frames
            self.feed(frame)

    @property
    def done(self) -> bool:
        """The trailer came: read no further."""
        return self._trailer is not None

    def feed(self, frame: WireFrame) -> bool:
        """Take the next frame after the header; True once the trailer came."""
        which, body = _body(frame)
        if which == "data":
            self.received += len(body)
            if self.received > self.header.size:
                raise IntegrityError(f"payload longer than the {self.header.size} bytes announced")
            self._digest.update(body)
            self._write(body)
        elif which == "trailer":
            self._trailer = body
        else:
            raise IntegrityError(f"unexpected {which!r} frame inside a payload")
        return self.done

    def finish(self) -> str:
        """The payload's checksum, once its size and trailer check out."""
        digest = self._digest.hexdigest()
        _check_end(self.header, self.received, digest, self._trailer)
        return digest


async def read_header_async(frames: AsyncIterator[WireFrame]) -> PayloadHeader:
    """:func:`read_header` for a ``grpc.aio`` request stream."""
    try:
        first = [await anext(frames)]
    except StopAsyncIteration:
        first = []
    return read_header(iter(first))


async def receive_to_file_async(
    header: PayloadHeader,
    frames: AsyncIterator[WireFrame],
    dest: Path,
    *,
    max_size: int,
    durable: bool = True,
) -> ReceivedPayload:
    """:func:`receive_to_file` for a ``grpc.aio`` request stream."""
    _check_size(header, max_size)
    with _partial_file(dest, durable=durable) as f:
        digest = await _receive_into_async(header, frames, f.write)
    return ReceivedPayload(header=header, path=dest, size=header.size, checksum=digest)


async def receive_bytes_async(
    header: PayloadHeader, frames: AsyncIterator[WireFrame], *, max_size: int
) -> bytes:
    """:func:`receive_bytes` for a ``grpc.aio`` request stream."""
    _check_size(header, max_size)
    parts: list[bytes] = []
    await _receive_into_async(header, frames, parts.append)
    return b"".join(parts)


async def _receive_into_async(
    header: PayloadHeader, frames: AsyncIterator[WireFrame], write: Callable[[Any], object]
) -> str:
    rx = PayloadReceiver(header, write)
    if not rx.done:
        async for frame in frames:
            if rx.feed(frame):
                break
    return rx.finish()


_partial_names = itertools.count()


@contextlib.contextmanager
def _partial_file(dest: Path, *, durable: bool) -> Iterator[BinaryIO]:
    """A new file beside ``dest``, renamed to it if the block succeeds and
    removed if it fails: a partial or refused payload never becomes visible.
    Its name is unique, so two uploads to one ``dest`` never share it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{next(_partial_names)}.partial")
    try:
        with open(tmp, "wb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def receive_to_file(
    header: PayloadHeader,
    frames: Iterable[WireFrame],
    dest: Path,
    *,
    max_size: int,
    durable: bool = True,
) -> ReceivedPayload:
    """Write the data frames after ``header`` to ``dest``, atomically.

    Raises IntegrityError (and leaves nothing at ``dest``) when the stream is
    truncated, longer than announced or than ``max_size``, or its checksum differs.
    ``durable=False`` skips the fsync for files consumed at once and never
    relied on after a crash (a round's results).
    """
    _check_size(header, max_size)
    with _partial_file(dest, durable=durable) as f:
        digest = _receive_into(header, frames, f.write)
    return ReceivedPayload(header=header, path=dest, size=header.size, checksum=digest)


def receive_to_memory(
    header: PayloadHeader,
    frames: Iterable[WireFrame],
    *,
    max_size: int,
    pool: MemoryPool | None = None,
) -> memoryview:
    """Receive a payload of any size into memory of its own, checked like
    :func:`receive_to_file`, and return it.

    The memory is an anonymous mapping of exactly the announced size: filled
    chunk by chunk (no list of parts joined at the end, no file in the page
    cache to write and read back), untouched pages cost nothing if a peer
    announces more than it sends, and it goes back to the system as soon as
    the last view of it (e.g. arrays decoded from it) is dropped. With a
    ``pool``, a mapping of an earlier payload that nothing refers to any
    more is filled again instead.
    """
    _check_size(header, max_size)
    if header.size == 0:  # mmap cannot map nothing; any data is refused unwritten
        _receive_into(header, frames, lambda body: None)
        return memoryview(b"")
    buf = pool.take(header.size) if pool is not None else _anonymous_memory(header.size)
    _receive_into(header, frames, buf.write)
    return memoryview(buf)


class MemoryPool:
    """Mappings for :func:`receive_to_memory` that are filled again once
    nothing refers to them, for a process that receives a model of the same
    size over and over (a job worker, one task a round).

    Fresh memory costs a page fault and a cleared page per page: filling
    100 MiB of it ran at 0.6-1.2 GB/s on the bench machine, the same
    mapping filled again at 8 GB/s. A mapping is reused only when no view of
    it is left (the arrays of an earlier task still in use keep theirs);
    the pool keeps the last ``keep`` it handed out, the rest go back to the
    system when their last view does.
    """

    def __init__(self, keep: int = 2) -> None:
        self._keep = keep
        self._maps: list[mmap.mmap] = []

    def take(self, size: int) -> mmap.mmap:
        """A mapping of ``size`` bytes, positioned at its start."""
        for buf in self._maps:
            if len(buf) == size and _unreferenced(buf):
                buf.seek(0)
                return buf
        buf = _anonymous_memory(size)
        self._maps.append(buf)
        del self._maps[: -self._keep]
        return buf


def _unreferenced(buf: mmap.mmap) -> bool:
    """No buffer exported from ``buf`` is alive. mmap refuses to resize while
    one is; resizing to the same size changes nothing otherwise."""
    try:
        buf.resize(len(buf))
    except BufferError:
        return False
    except (OSError, SystemError, ValueError):  # no mremap here: never reuse
        return False
    return True


def _anonymous_memory(size: int) -> mmap.mmap:
    """Private memory, in huge pages where the system allows: filling 100 MiB
    of fresh 4 KiB pages cost 60-140 ms here (a fault each), huge pages 15-55."""
    if not hasattr(mmap, "MAP_ANONYMOUS"):  # pragma: no cover - not Linux
        return mmap.mmap(-1, size)
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):
            buf.madvise(mmap.MADV_HUGEPAGE)
    return buf


def receive_bytes(header: PayloadHeader, frames: Iterable[WireFrame], *, max_size: int) -> bytes:
    """Like :func:`receive_to_memory`, as bytes: for small payloads."""
    _check_size(header, max_size)
    parts: list[bytes] = []
    _receive_into(header, frames, parts.append)
    return b"".join(parts)


def _check_end(
    header: PayloadHeader, received: int, digest: str, trailer: pb.Trailer | None
) -> None:
    if trailer is None:
        raise IntegrityError(f"payload truncated after {received} of {header.size} bytes")
    if received != header.size:
        raise IntegrityError(f"payload has {received} bytes, {header.size} were announced")
    if not trailer.xxh3_128:
        raise IntegrityError(
            "payload trailer carries no XXH3-128 checksum (a peer of an older shoal build?)"
        )
    if trailer.xxh3_128 != digest:
        raise IntegrityError("payload checksum (XXH3-128) mismatch")


def human_bytes(n: float) -> str:
    """408512 -> '398.9KB', as in the logs NVIDIA FLARE users read."""
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{int(n)}B" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}GB"
