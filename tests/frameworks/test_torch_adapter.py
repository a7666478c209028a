"""PyTorch state dicts as named numpy arrays: every dtype bit for bit, buffers,
tied weights, every mismatch refused by name, and the wire format both ways."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from shoal.aggregation import WeightedMean  # noqa: E402
from shoal.arrays import arrays_from_bytes, encode_arrays, load_arrays, save_arrays  # noqa: E402
from shoal.errors import ArrayFormatError  # noqa: E402
from shoal.frameworks import FrameworkAdapter, adapter_for, as_numpy_params  # noqa: E402
from shoal.frameworks.torch import (  # noqa: E402
    TorchAdapter,
    get_weights,
    set_weights,
    to_numpy_params,
)

nn = torch.nn

DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
    *[getattr(torch, n) for n in ("uint16", "uint32", "uint64") if hasattr(torch, n)],
]
_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """``t``'s bits as a same-size integer tensor: equal bits, not equal values
    (NaN != NaN, -0.0 == 0.0)."""
    return t.detach().contiguous().view(_BITS[t.element_size()])


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def _special(dtype: torch.dtype) -> list[int]:
    """Bit patterns a value-wise copy or a cast would change: NaNs with
    payloads, a signalling NaN, -0.0, infinities, subnormals."""
    if dtype == torch.bfloat16:
        return [0x7FC1, -0x003F, 0x7F81, -0x8000, 0x7F80, 0x0001, 0x7F7F]
    if dtype == torch.float16:
        return [0x7E01, -0x01FF, 0x7C01, -0x8000, 0x7C00, 0x0001, 0x7BFF]
    if dtype == torch.float32:
        return [0x7FC00123, -0x0000_0001, 0x7F800001, -0x8000_0000, 0x7F800000, 1]
    if dtype == torch.float64:
        return [0x7FF8_0000_0000_0123, -1, 0x7FF0_0000_0000_0001, -(2**63), 1]
    return []


def _filled(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Random bits of ``dtype`` (every pattern a float can hold), the special
    ones first."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    itemsize = torch.empty(0, dtype=dtype).element_size()
    bits = _BITS[itemsize]
    info = torch.iinfo(bits)
    flat = torch.randint(info.min, info.max, (int(np.prod(shape)),), generator=g, dtype=bits)
    special = _special(dtype)
    flat[: len(special)] = torch.tensor(special, dtype=bits)
    return flat.view(dtype).reshape(shape)


class AllDtypes(nn.Module):
    """A float parameter and a buffer of every dtype, one non-contiguous."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.weight = nn.Parameter(_filled(torch.float32, (3, 4), seed))
        self.bf16 = nn.Parameter(_filled(torch.bfloat16, (4, 3), seed + 1).t())
        for i, dtype in enumerate(DTYPES):
            self.register_buffer(f"b_{str(dtype)[6:]}", _filled(dtype, (2, 5), seed + 10 + i))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


class Tied(nn.Module):
    """A language-model head that shares the embedding's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.mid = nn.Linear(6, 6)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.embed.weight


def _state_bits(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: _bits(v).clone() for k, v in module.state_dict().items()}


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert _same_bits(sa[name], sb[name]), name


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_each_dtype_round_trips_bit_for_bit(dtype: torch.dtype) -> None:
    source, target = nn.Module(), nn.Module()
    source.register_buffer("x", _filled(dtype, (4, 7), seed=1))
    target.register_buffer("x", torch.zeros((4, 7), dtype=dtype))
    params = get_weights(source)
    expected = ml_dtypes.bfloat16 if dtype == torch.bfloat16 else str(dtype)[6:]
    assert params["x"].dtype == np.dtype(expected)
    set_weights(target, params)
    assert _same_bits(target.x, source.x)


def test_every_dtype_through_the_wire_format_and_a_file(tmp_path: Path) -> None:
    source, target = AllDtypes(seed=0), AllDtypes(seed=99)
    assert not torch.equal(_bits(source.b_float32), _bits(target.b_float32))
    params = get_weights(source)
    # Encoded as a stream and decoded from memory...
    encoded = encode_arrays(params)
    data = bytearray().join(bytes(p) for p in encoded.pieces)
    set_weights(target, arrays_from_bytes(data))
    _assert_same_state(source, target)
    # ...and through a file, read memory-mapped (read-only arrays).
    other = AllDtypes(seed=7)
    set_weights(other, load_arrays(save_arrays(tmp_path / "m.safetensors", params)))
    _assert_same_state(source, other)


def test_names_are_state_dict_keys_buffers_included() -> None:
    torch.manual_seed(0)
    trained = Net()
    trained.train()
    for _ in range(3):  # moves the batch-norm statistics and their counter
        trained(torch.randn(5, 1, 8, 8)).sum().backward()
    params = get_weights(trained)
    assert list(params) == list(trained.state_dict())
    assert {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"} <= set(params)
    assert params["bn.num_batches_tracked"].dtype == np.int64
    assert int(params["bn.num_batches_tracked"]) == 3
    fresh = Net()
    set_weights(fresh, params)
    _assert_same_state(trained, fresh)
    assert int(fresh.bn.num_batches_tracked) == 3


def test_get_weights_are_views_and_set_weights_copies_in_place() -> None:
    module = AllDtypes()
    params = get_weights(module)
    # No copy: each array is the tensor's own memory, bfloat16 included.
    assert np.shares_memory(params["weight"], module.weight.detach().numpy())
    assert np.shares_memory(params["b_bfloat16"], module.b_bfloat16.view(torch.int16).numpy())
    # In place: the same Parameter objects and memory, as an optimizer holds them.
    weight, ptr = module.weight, module.weight.data_ptr()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    new = {k: v.copy() for k, v in get_weights(AllDtypes(seed=5)).items()}
    set_weights(module, new)
    assert module.weight is weight and module.weight.data_ptr() == ptr
    assert optimizer.param_groups[0]["params"][0] is weight
    assert module.weight.requires_grad
    assert module.weight.detach().numpy().tobytes() == new["weight"].tobytes()


def test_tied_weights_travel_once_and_fill_both_keys() -> None:
    torch.manual_seed(0)
    source, target = Tied(), Tied()
    assert "head.weight" in source.state_dict()
    params = get_weights(source)
    assert list(params) == ["embed.weight", "mid.weight", "mid.bias"]
    set_weights(target, params)
    _assert_same_state(source, target)
    assert target.head.weight is target.embed.weight  # still tied
    # The state dict itself, put into FLModel.params, gives the same names.
    assert list(to_numpy_params(source.state_dict())) == list(params)
    # A tied key may be given too, with its first key's values...
    full = {k: v.numpy() for k, v in source.state_dict().items()}
    set_weights(target, full)
    # ...but not with others.
    full["head.weight"] = full["head.weight"] + 1
    with pytest.raises(ArrayFormatError, match="'head.weight' is tied to 'embed.weight'"):
        set_weights(target, full)


def test_tied_weights_aggregate_once() -> None:
    """One array per tensor: an aggregator that writes into its inputs'
    memory (the driver reuses the last model's) cannot update a tied tensor twice."""
    sites = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        sites.append(get_weights(Tied()))
    mean = WeightedMean(reuse=get_weights(Tied()))
    mean.add(sites[0], weight=1)
    mean.add(sites[1], weight=3)
    out = mean.result()
    expected = (sites[0]["embed.weight"] + 3 * sites[1]["embed.weight"]) / 4
    np.testing.assert_allclose(out["embed.weight"], expected, rtol=1e-6)
    target = Tied()
    set_weights(target, out)
    assert np.array_equal(target.head.weight.detach().numpy(), out["embed.weight"])


def test_views_of_part_of_another_tensor_are_copied() -> None:
    module = nn.Module()
    module.w = nn.Parameter(torch.arange(8.0))
    module.register_buffer("tail", module.w.data[4:])  # a view of part of w
    module.register_buffer("other", torch.ones(2))
    params = get_weights(module)
    assert list(params) == ["w", "tail", "other"]
    assert not np.shares_memory(params["w"], params["tail"])
    assert np.shares_memory(params["w"], module.w.detach().numpy())
    np.testing.assert_array_equal(params["tail"], [4, 5, 6, 7])


def test_mismatching_keys_name_the_first_and_change_nothing() -> None:
    module = Net()
    before = _state_bits(module)
    params = {k: v.copy() for k, v in get_weights(Net()).items()}
    missing = dict(params)
    del missing["bn.running_var"]
    with pytest.raises(ArrayFormatError, match=r"missing 'bn.running_var'\)"):
        set_weights(module, missing)
    renamed = {("model." + k if k.startswith("fc") else k): v for k, v in params.items()}
    with pytest.raises(
        ArrayFormatError,
        match=r"missing 'fc.weight', 'fc.bias'; unexpected 'model.fc.weight', 'model.fc.bias'",
    ):
        set_weights(module, renamed)
    extra = {**params, "head.weight": np.zeros(3, np.float32)}
    with pytest.raises(ArrayFormatError, match=r"unexpected 'head.weight'\)"):
        set_weights(module, extra)
    assert all(torch.equal(v, _state_bits(module)[k]) for k, v in before.items())


def test_shape_and_dtype_mismatches_are_named_and_change_nothing() -> None:
    module = Net()
    before = _state_bits(module)
    params = {k: v.copy() for k, v in get_weights(Net()).items()}
    bad_shape = {**params, "fc.bias": np.zeros(9, np.float32)}
    with pytest.raises(ArrayFormatError, match=r"'fc.bias': shape \(9,\) differs .* \(10,\)"):
        set_weights(module, bad_shape)
    # No silent cast: float64 into float32, bfloat16 into float16, float into int64.
    for name, value, want in [
        ("fc.bias", params["fc.bias"].astype(np.float64), "float64 differs .* float32"),
        ("bn.num_batches_tracked", np.array(1.0), "float64 differs .* int64"),
    ]:
        with pytest.raises(ArrayFormatError, match=f"'{name}': dtype {want}"):
            set_weights(module, {**params, name: value})
    half = nn.Module()
    half.register_buffer("h", torch.zeros(2, dtype=torch.float16))
    with pytest.raises(ArrayFormatError, match="'h': dtype bfloat16 differs .* float16"):
        set_weights(half, {"h": np.zeros(2, ml_dtypes.bfloat16)})
    assert all(torch.equal(v, _state_bits(module)[k]) for k, v in before.items())


def test_dtypes_that_cannot_travel_are_named() -> None:
    module = nn.Module()
    module.register_buffer("ok", torch.zeros(2))
    module.register_buffer("c", torch.zeros(2, dtype=torch.complex64))
    with pytest.raises(ArrayFormatError, match="tensor 'c': dtype complex64 cannot travel"):
        get_weights(module)
    lazy = nn.LazyLinear(3)
    with pytest.raises(ArrayFormatError, match="'weight' holds no data yet"):
        get_weights(lazy)
    sparse = {"s": torch.eye(3).to_sparse()}
    with pytest.raises(ArrayFormatError, match="'s': a torch.sparse_coo tensor cannot travel"):
        to_numpy_params(sparse)


def test_to_numpy_params_converts_tensors_only() -> None:
    weight = nn.Parameter(torch.randn(3, 4))  # requires grad
    params = {
        "w": weight,
        "t": torch.arange(12, dtype=torch.bfloat16).reshape(3, 4).t(),  # non-contiguous
        "n": np.ones(2, np.float16),
        "step": torch.tensor(5),
    }
    out = to_numpy_params(params)
    assert list(out) == list(params)
    assert out["n"] is params["n"]
    assert out["w"].dtype == np.float32 and np.shares_memory(out["w"], weight.detach().numpy())
    assert out["t"].dtype == np.dtype(ml_dtypes.bfloat16) and out["t"].shape == (4, 3)
    np.testing.assert_array_equal(out["t"].astype(np.float32), params["t"].float().numpy())
    assert out["step"].dtype == np.int64 and int(out["step"]) == 5
    # The non-contiguous one encodes as its logical values.
    decoded = arrays_from_bytes(b"".join(bytes(p) for p in encode_arrays(out).pieces))
    np.testing.assert_array_equal(decoded["t"], out["t"])
    assert as_numpy_params(params).keys() == out.keys()
    # set_weights takes tensors too.
    module = nn.Module()
    module.register_buffer("t", torch.zeros(4, 3, dtype=torch.bfloat16))
    set_weights(module, {"t": params["t"]})
    assert torch.equal(module.t, params["t"])


def test_adapter_for_a_module_and_a_native_file(tmp_path: Path) -> None:
    module = Net()
    adapter = adapter_for(module)
    assert isinstance(adapter, TorchAdapter) and isinstance(adapter, FrameworkAdapter)
    assert (adapter.name, adapter.suffix) == ("torch", ".pt")
    path = tmp_path / "out" / "global_final.pt"
    adapter.save(module, path)
    loaded = Net()
    loaded.load_state_dict(torch.load(path, weights_only=True))
    _assert_same_state(module, loaded)


def test_safetensors_and_shoal_agree_on_a_bfloat16_state_dict(tmp_path: Path) -> None:
    st_torch = pytest.importorskip("safetensors.torch")
    module = AllDtypes(seed=3)
    state = {k: v.contiguous() for k, v in module.state_dict().items()}
    # safetensors writes, shoal reads and loads.
    theirs = tmp_path / "theirs.safetensors"
    st_torch.save_file(state, str(theirs))
    loaded = AllDtypes(seed=4)
    set_weights(loaded, load_arrays(theirs))
    _assert_same_state(module, loaded)
    # shoal writes, safetensors reads.
    ours = save_arrays(tmp_path / "ours.safetensors", get_weights(module))
    back = st_torch.load_file(str(ours))
    assert back.keys() == state.keys()
    for name, tensor in state.items():
        assert _same_bits(back[name], tensor), name


def test_bfloat16_modules_aggregate_to_the_rounded_exact_mean() -> None:
    sites, weights = [], [100, 300, 600]
    for seed in range(3):
        torch.manual_seed(seed)
        sites.append(nn.Linear(64, 32).to(torch.bfloat16))
    mean = WeightedMean()
    for module, w in zip(sites, weights, strict=True):
        mean.add(get_weights(module), weight=w)
    target = nn.Linear(64, 32).to(torch.bfloat16)
    set_weights(target, mean.result())
    exact = sum(m.weight.double() * w for m, w in zip(sites, weights, strict=True)) / sum(weights)
    assert target.weight.dtype == torch.bfloat16
    assert torch.mean((target.weight == exact.to(torch.bfloat16)).float()) > 0.99
