"""Event files written without TensorFlow, read back by us (and by TF if present)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest

from shoal.errors import ShoalError
from shoal.tensorboard import ScalarWriter, crc32c, masked_crc32c, read_scalars


def test_crc32c_known_vectors() -> None:
    assert crc32c(b"") == 0
    assert crc32c(b"123456789") == 0xE3069283
    assert masked_crc32c(b"") == 0xA282EAD8


def _write(tmp_path: Path) -> Path:
    with ScalarWriter(tmp_path / "tb") as tb:
        tb.add_scalars({"server/accuracy": 0.5, "sites/site-1/loss": 2.25}, step=1)
        tb.add_scalars({"server/accuracy": 0.75}, step=2)
        tb.add_scalars({}, step=3)
    return tb.path


def test_round_trip(tmp_path: Path) -> None:
    path = _write(tmp_path)
    assert path.name.startswith("events.out.tfevents.")
    got = [(s.tag, s.step, s.value) for s in read_scalars(path)]
    assert got == [
        ("server/accuracy", 1, 0.5),
        ("sites/site-1/loss", 1, 2.25),
        ("server/accuracy", 2, 0.75),
    ]


def test_corruption_detected(tmp_path: Path) -> None:
    path = _write(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[-6] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ShoalError, match="CRC"):
        read_scalars(path)


def test_closed_writer_refuses(tmp_path: Path) -> None:
    tb = ScalarWriter(tmp_path)
    tb.close()
    with pytest.raises(ShoalError, match="closed"):
        tb.add_scalars({"a": 1.0}, step=1)


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None, reason="TensorFlow not installed"
)
def test_tensorflow_reads_it(tmp_path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import tensorflow as tf

    path = _write(tmp_path)
    seen = []
    for event in tf.compat.v1.train.summary_iterator(str(path)):
        for value in event.summary.value:
            seen.append((value.tag, event.step, value.simple_value))
    assert ("server/accuracy", 2, 0.75) in seen
    assert len(seen) == 3


def test_a_value_beyond_float32_is_left_out_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with ScalarWriter(tmp_path) as tb, caplog.at_level(logging.WARNING, logger="shoal.tensorboard"):
        tb.add_scalars({"a": 1e308, "b": 0.5, "c": 10**400, "d": float("nan")}, step=1)
        tb.add_scalars({"a": -1e39}, step=2)  # nothing left: no event
    (path,) = tmp_path.glob("events.out.tfevents.*")
    got = [(s.tag, s.step) for s in read_scalars(path)]
    assert got == [("b", 1), ("d", 1)]  # NaN is a float32, as before
    assert [r.getMessage() for r in caplog.records] == [
        "tensorboard: left out a: 1e+308 is beyond float32's range",
        "tensorboard: left out c: an int past float's range",
        "tensorboard: left out a: -1e+39 is beyond float32's range",
    ]
