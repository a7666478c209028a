"""TensorBoard scalar event files, without TensorFlow.

An event file is a sequence of TFRecords (``uint64 length``, masked CRC-32C of
the length, the bytes, masked CRC-32C of the bytes), each holding one
TensorFlow ``Event``. protobuf encodes the events (``proto/shoal/v1/
tensorboard.proto``: the fields scalars need, with TensorFlow's numbers) and
``google-crc32c`` computes the checksums; what is left here is the framing,
the file's name and the float32 range check::

    with ScalarWriter(run_dir / "tensorboard") as tb:
        tb.add_scalars({"server/accuracy": 0.97}, step=3)

:func:`read_scalars` reads such files back (verifying every CRC), for tests
and for tools that want the numbers without TensorBoard. (Not tensorboardX:
importing it imports PyTorch wherever PyTorch is installed, about 2 s and
213 MiB more for every job's workflow process; docs/architecture.md.)
"""

from __future__ import annotations

import logging
import math
import os
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import google_crc32c
from google.protobuf.message import DecodeError

from shoal._proto import tensorboard_pb2 as tb_pb
from shoal.errors import ShoalError

__all__ = ["Scalar", "ScalarWriter", "crc32c", "masked_crc32c", "read_scalars"]

logger = logging.getLogger(__name__)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord uses."""
    return int(google_crc32c.value(data))


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 and add a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


_FLOAT32_MAX = 3.4028234663852886e38


def _summary(values: Mapping[str, float]) -> tb_pb.Summary:
    summary = tb_pb.Summary()
    for tag, value in values.items():
        # simple_value is a float32 (NaN and Inf included): a finite number
        # past its range has no float32, and one such number must not cost
        # the event its other scalars, nor the caller its run.
        try:
            f = float(value)
        except OverflowError:
            logger.warning("tensorboard: left out %s: an int past float's range", tag)
            continue
        if math.isfinite(f) and abs(f) > _FLOAT32_MAX:
            logger.warning("tensorboard: left out %s: %.4g is beyond float32's range", tag, f)
            continue
        summary.value.add(tag=tag, simple_value=f)
    return summary


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
        self._write(tb_pb.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event: tb_pb.Event) -> None:
        if self._file is None:
            raise ShoalError(f"{self.path}: writer is closed")
        self._file.write(_record(event.SerializeToString()))
        self._file.flush()

    def add_scalars(
        self, values: Mapping[str, float], step: int, *, wall_time: float | None = None
    ) -> None:
        """Write ``{tag: value}`` at ``step`` (one event). A finite value
        beyond float32's range is left out, with a warning naming its tag."""
        summary = _summary(values)
        if not summary.value:
            return
        when = time.time() if wall_time is None else wall_time
        self._write(tb_pb.Event(wall_time=when, step=step, summary=summary))

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


def _records(path: Path) -> list[bytes]:
    """The records of a TFRecord file, each one's CRCs checked."""
    data = Path(path).read_bytes()
    pos = 0
    out = []
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
        out.append(body)
        pos += 16 + length
    return out


def read_scalars(path: Path) -> list[Scalar]:
    """Every scalar in an event file, checking each record's CRCs."""
    out: list[Scalar] = []
    for body in _records(path):
        try:
            event = tb_pb.Event.FromString(body)
        except DecodeError as exc:
            raise ShoalError(f"{path}: an event that does not parse: {exc}") from None
        for value in event.summary.value:
            out.append(
                Scalar(
                    tag=value.tag,
                    step=event.step,
                    value=value.simple_value,
                    wall_time=event.wall_time,
                )
            )
    return out
