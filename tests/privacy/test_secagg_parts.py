"""The parts of SecAgg: Shamir sharing, the ring's quantization, masks
expanded from seeds, the neighbour graph, the message codec."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.privacy.secagg.graph import neighbours
from shoal.privacy.secagg.masks import CHUNK, MaskStream, mask_update, remove_masks
from shoal.privacy.secagg.messages import ProtocolError, RoundConfig, decode, encode
from shoal.privacy.secagg.ring import Ring
from shoal.privacy.secagg.shamir import (
    PRIME,
    ShamirError,
    combine,
    share_from_bytes,
    share_to_bytes,
    split,
)

U32 = np.dtype("<u4")


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    n=st.integers(1, 9),
    data=st.data(),
)
def test_any_threshold_shares_give_the_secret_back(
    secret: bytes, n: int, data: st.DataObject
) -> None:
    t = data.draw(st.integers(1, n))
    xs = data.draw(st.lists(st.integers(1, 10**6), min_size=n, max_size=n, unique=True))
    shares = split(secret, threshold=t, xs=xs)
    assert sorted(shares) == sorted(xs)
    subset = data.draw(st.lists(st.sampled_from(xs), min_size=t, max_size=n, unique=True))
    assert combine({x: shares[x] for x in subset}, threshold=t) == secret


def test_fewer_than_threshold_shares_do_not_give_the_secret() -> None:
    secret = bytes(range(32))
    shares = split(secret, threshold=3, xs=[1, 2, 3, 4])
    with pytest.raises(ShamirError, match="3 needed"):
        combine({1: shares[1], 2: shares[2]}, threshold=3)
    # Two shares taken as if the threshold were 2: a different value (or no
    # secret at all), never this one.
    with contextlib.suppress(ShamirError):
        assert combine({1: shares[1], 2: shares[2]}, threshold=2) != secret


def test_one_share_is_uniform_whatever_the_secret() -> None:
    # With t >= 2 a single share is f(x) for a random polynomial: its top
    # bits are as often set for an all-zero secret as for an all-one one.
    for secret in (bytes(32), b"\xff" * 32):
        tops = [split(secret, threshold=2, xs=[1, 2])[1] >> 520 for _ in range(400)]
        assert 120 < sum(tops) < 280


def test_shares_round_trip_and_bad_input_is_named() -> None:
    y = PRIME - 1
    assert share_from_bytes(share_to_bytes(y)) == y
    with pytest.raises(ShamirError, match="field element"):
        share_from_bytes(b"\xff" * 66)
    with pytest.raises(ShamirError, match="66 bytes"):
        share_from_bytes(b"\0")
    with pytest.raises(ShamirError, match="32 bytes"):
        split(b"short", threshold=1, xs=[1])
    with pytest.raises(ShamirError, match="distinct"):
        split(bytes(32), threshold=1, xs=[1, 1])
    with pytest.raises(ShamirError, match="threshold"):
        split(bytes(32), threshold=3, xs=[1, 2])
    with pytest.raises(ShamirError, match=r"\[1, p\)"):
        split(bytes(32), threshold=1, xs=[0])


def test_quantization_error_is_under_one_step_and_unbiased() -> None:
    ring = Ring(bits=16, clip_range=1.0, max_addends=4)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 20_000)
    q, clipped = ring.quantize(x, rng)
    assert q.dtype == np.uint16 and clipped == 0
    assert int(q.max()) <= ring.levels
    back = ring.dequantize_sum(q, count=1)
    assert np.abs(back - x).max() < ring.step
    # Stochastic rounding: the mean error is far below a step.
    assert abs(float((back - x).mean())) < ring.step / 20


def test_quantization_clips_and_counts() -> None:
    ring = Ring(bits=32, clip_range=0.5, max_addends=2)
    q, clipped = ring.quantize(np.array([-3.0, 0.0, 0.25, 9.0]), np.random.default_rng(1))
    assert clipped == 2
    np.testing.assert_allclose(
        ring.dequantize_sum(q, count=1), [-0.5, 0, 0.25, 0.5], atol=ring.step
    )


def test_a_sum_of_max_addends_never_wraps() -> None:
    ring = Ring(bits=16, clip_range=1.0, max_addends=5)
    top, _ = ring.quantize(np.full(3, 7.0), np.random.default_rng(2))
    total = sum((top.astype(np.uint64) for _ in range(5)), np.zeros(3, np.uint64))
    assert int(total.max()) < ring.modulus
    with pytest.raises(ValueError, match="bits"):
        Ring(bits=8, clip_range=1.0, max_addends=2)


def test_a_mask_stream_is_the_same_read_in_any_chunks() -> None:
    seed = bytes(range(32))
    whole = MaskStream(seed, U32).take(1000)
    parts = MaskStream(seed, U32)
    pieces = np.concatenate([parts.take(n).copy() for n in (1, 10, 300, 689)])
    np.testing.assert_array_equal(whole, pieces)
    assert not np.array_equal(whole, MaskStream(bytes(32), U32).take(1000))


def test_masks_are_uniform_in_the_ring() -> None:
    values = MaskStream(b"\x07" * 32, U32).take(1 << 18)
    counts = np.bincount((values >> 24).astype(np.int64), minlength=256)
    expected = values.size / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 340  # 255 degrees of freedom: p ~ 0.0003


def test_pairwise_and_self_masks_cancel_across_chunks() -> None:
    ring = Ring(bits=32, clip_range=2.0, max_addends=3)
    rng = np.random.default_rng(3)
    updates = [
        {"w": rng.uniform(-1, 1, (CHUNK + 5,)), "b": rng.uniform(-1, 1, (3, 2))} for _ in range(3)
    ]
    pair = {(0, 1): b"a" * 32, (0, 2): b"b" * 32, (1, 2): b"c" * 32}
    selfs = [bytes([i]) * 32 for i in range(3)]
    total = {"w": np.zeros(CHUNK + 5, U32), "b": np.zeros((3, 2), U32)}
    weight = np.zeros(1, U32)
    for i, up in enumerate(updates):
        seeds = [(selfs[i], 1)]
        for (a, b), seed in pair.items():
            if i in (a, b):
                seeds.append((seed, 1 if i == a else -1))
        m = mask_update(
            up,
            weight=1,
            scale=1.0,
            quantize=lambda x: ring.quantize(x, rng),
            dtype=U32,
            seeds=seeds,
        )
        for name in total:
            assert m.arrays[name].shape == up[name].shape
            total[name] += m.arrays[name]
        weight += m.weight
    remove_masks(total, weight, [(s, 1) for s in selfs])
    assert int(weight[0]) == 3
    for name in total:
        expected = sum(u[name] for u in updates)
        got = ring.dequantize_sum(total[name], count=3)
        assert np.abs(got - expected).max() < 3 * ring.step


@pytest.mark.parametrize("n,degree", [(5, 2), (10, 4), (33, 6), (7, 0), (4, 8)])
def test_the_neighbour_graph_is_symmetric_regular_and_agreed(n: int, degree: int) -> None:
    sites = [f"site-{i}" for i in range(1, n + 1)]
    g = neighbours(sites, degree=degree, seed=42)
    assert g == neighbours(list(reversed(sites)), degree=degree, seed=42)  # order-free
    want = n - 1 if degree == 0 or degree >= n - 1 else degree
    for site, peers in g.items():
        assert site not in peers and len(peers) == want
        assert all(site in g[p] for p in peers)
    if 0 < degree < n - 1:
        assert g != neighbours(sites, degree=degree, seed=43)
    with pytest.raises(ValueError, match="even"):
        neighbours(sites + ["x", "y", "z"], degree=3, seed=1)


def test_round_config_refuses_what_would_weaken_the_guarantee() -> None:
    good = RoundConfig(
        round=1,
        sites=("a", "b", "c", "d", "e"),
        graph_seed=1,
        degree=0,
        threshold=3,
        bits=32,
        clip_range=1.0,
        max_weight=100,
    )
    assert RoundConfig.from_doc(decode(encode(good.to_doc()), "x")) == good
    for change, message in [
        ({"threshold": 2}, "more than half"),
        ({"threshold": 6}, "at most"),
        ({"bits": 12}, "bits"),
        ({"clip_range": 0.0}, "clip_range"),
        ({"max_weight": 2**31}, "fit"),
        ({"sites": ["a"]}, ">= 2 sites"),
    ]:
        with pytest.raises(ProtocolError, match=message):
            RoundConfig.from_doc({**good.to_doc(), **change})
    with pytest.raises(ProtocolError, match="integer"):
        RoundConfig.from_doc({**good.to_doc(), "round": "1"})


def test_messages_refuse_what_is_not_a_json_object() -> None:
    with pytest.raises(ProtocolError, match="uint8"):
        decode(np.zeros(3, np.float32), "m")
    with pytest.raises(ProtocolError, match="not JSON"):
        decode(np.frombuffer(b"\xff{", np.uint8), "m")
    with pytest.raises(ProtocolError, match="object"):
        decode(encode([1, 2]), "m")  # type: ignore[arg-type]
    assert decode(encode({"a": [1, "x"]}), "m") == {"a": [1, "x"]}
