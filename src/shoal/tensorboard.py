"""TensorBoard scalar event files, written in pure Python (no TensorFlow).

An event file is a sequence of TFRecords (``uint64 length``, masked CRC-32C of
the length, the bytes, masked CRC-32C of the bytes), each holding one
``tensorflow.Event`` protobuf. We hand-encode the few fields needed for
scalars::

    Event   { double wall_time = 1; int64 step = 2; string file_version = 3;
              Summary summary = 5; }
    Summary { repeated Value value = 1; }
    Value   { string tag = 1; float simple_value = 2; }

    with ScalarWriter(run_dir / "tensorboard") as tb:
        tb.add_scalars({"server/accuracy": 0.97}, step=3)

:func:`read_scalars` reads such files back (verifying every CRC), for tests
and for tools that want the numbers without TensorBoard.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import struct
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from shoal.errors import ShoalError

__all__ = ["Scalar", "ScalarWriter", "crc32c", "masked_crc32c", "read_scalars"]

logger = logging.getLogger(__name__)


def _make_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _make_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord uses."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 and add a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 as two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _event(
    wall_time: float, *, step: int = 0, file_version: str = "", summary: bytes = b""
) -> bytes:
    out = b"\x09" + struct.pack("<d", wall_time)  # field 1, fixed64
    if step:
        out += b"\x10" + _varint(step)  # field 2, varint
    if file_version:
        out += _len_field(3, file_version.encode())
    if summary:
        out += _len_field(5, summary)
    return out


_FLOAT32_MAX = 3.4028234663852886e38


def _summary(values: Mapping[str, float]) -> bytes:
    out = b""
    for tag, value in values.items():
        # simple_value is a float32 (NaN and Inf included): struct refuses a
        # finite number past its range, and one such number must not cost the
        # event its other scalars, nor the caller its run.
        try:
            f = float(value)
        except OverflowError:
            logger.warning("tensorboard: left out %s: an int past float's range", tag)
            continue
        if math.isfinite(f) and abs(f) > _FLOAT32_MAX:
            logger.warning("tensorboard: left out %s: %.4g is beyond float32's range", tag, f)
            continue
        v = _len_field(1, tag.encode("utf-8")) + b"\x15" + struct.pack("<f", f)
        out += _len_field(1, v)
    return out


def _record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return (
        header
        + struct.pack("<I", masked_crc32c(header))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


class ScalarWriter:
    """Appends scalar summaries to a new event file in ``logdir``.

    Each call writes and flushes whole records, so TensorBoard can follow the
    file live and a crash loses at most the record being written.
    """

    def __init__(self, logdir: Path, *, filename_suffix: str = "") -> None:
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        name = (
            f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
            f".{os.getpid()}{filename_suffix}"
        )
        self.path = self.logdir / name
        self._file: BinaryIO | None = open(self.path, "ab")  # noqa: SIM115 - closed in close()
        self._write(_event(time.time(), file_version="brain.Event:2"))

    def _write(self, event: bytes) -> None:
        if self._file is None:
            raise ShoalError(f"{self.path}: writer is closed")
        self._file.write(_record(event))
        self._file.flush()

    def add_scalars(
        self, values: Mapping[str, float], step: int, *, wall_time: float | None = None
    ) -> None:
        """Write ``{tag: value}`` at ``step`` (one event). A finite value
        beyond float32's range is left out, with a warning naming its tag."""
        summary = _summary(values)
        if not summary:
            return
        self._write(
            _event(time.time() if wall_time is None else wall_time, step=step, summary=summary)
        )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ScalarWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True)
class Scalar:
    """One scalar read back from an event file."""

    #: The summary tag, e.g. ``"server/accuracy"``.
    tag: str
    #: The step (the round).
    step: int
    #: The value (stored as float32).
    value: float
    #: Seconds since the epoch when it was written.
    wall_time: float


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = 0
    value = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ShoalError("event: truncated or overlong varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def _fields(buf: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            yield number, wire, value
        elif wire == 1:
            yield number, wire, buf[pos : pos + 8]
            pos += 8
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            yield number, wire, buf[pos : pos + length]
            pos += length
        elif wire == 5:
            yield number, wire, buf[pos : pos + 4]
            pos += 4
        else:
            raise ShoalError(f"event: unsupported wire type {wire}")


def read_scalars(path: Path) -> list[Scalar]:
    """Every scalar in an event file, checking each record's CRCs."""
    data = Path(path).read_bytes()
    pos = 0
    out: list[Scalar] = []
    while pos < len(data):
        if pos + 12 > len(data):
            raise ShoalError(f"{path}: truncated record header at byte {pos}")
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        if crc != masked_crc32c(header):
            raise ShoalError(f"{path}: bad length CRC at byte {pos}")
        body = data[pos + 12 : pos + 12 + length]
        tail = data[pos + 12 + length : pos + 16 + length]
        if len(body) != length or len(tail) != 4:
            raise ShoalError(f"{path}: truncated record at byte {pos}")
        if struct.unpack("<I", tail)[0] != masked_crc32c(body):
            raise ShoalError(f"{path}: bad data CRC at byte {pos}")
        pos += 16 + length
        wall_time, step, summary = 0.0, 0, b""
        for number, _, value in _fields(body):
            if number == 1 and isinstance(value, bytes):
                (wall_time,) = struct.unpack("<d", value)
            elif number == 2 and isinstance(value, int):
                step = value - (1 << 64) if value >= 1 << 63 else value
            elif number == 5 and isinstance(value, bytes):
                summary = value
        for number, _, value in _fields(summary):
            if number != 1 or not isinstance(value, bytes):
                continue
            tag, scalar = "", 0.0
            for vn, _, vv in _fields(value):
                if vn == 1 and isinstance(vv, bytes):
                    tag = vv.decode("utf-8")
                elif vn == 2 and isinstance(vv, bytes):
                    (scalar,) = struct.unpack("<f", vv)
            out.append(Scalar(tag=tag, step=step, value=scalar, wall_time=wall_time))
    return out
