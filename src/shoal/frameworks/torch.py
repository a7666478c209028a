"""PyTorch weights as ``{state-dict key: numpy array}``.

Names are the module's ``state_dict()`` keys (``"conv1.weight"``,
``"bn1.running_mean"``, ``"bn1.num_batches_tracked"``): parameters and
persistent buffers, the same in every process that builds the same module.

    from shoal.frameworks.torch import get_weights, set_weights

    params = get_weights(model)     # {"fc.weight": array(10, 784), "fc.bias": ...}
    set_weights(model, params)      # copies into model's own tensors, on their device

Every dtype shoal's wire format carries travels bit for bit (NaN payloads
and -0.0 included): float32, float16, float64, bfloat16 (as
``ml_dtypes.bfloat16``: numpy has none), the signed and unsigned integers and
bool. Other dtypes (float8, complex, quantized) are refused, naming the key.

* **No copies where none is needed.** ``get_weights`` hands out numpy *views*
  of a CPU module's tensors (no copy: they change when the module does, and
  writing into them writes into the module); a GPU tensor costs one copy to
  host. ``set_weights`` copies each array into the existing tensor in place,
  so parameters stay on their device and optimizers keep their references.
* **Tied weights** (two keys, one tensor: an embedding shared with the output
  layer) travel once, under the first key in state-dict order; the other key
  is left out, and ``set_weights`` fills both by filling the one tensor.
* ``set_weights`` checks everything before it copies anything: a missing or
  unexpected key, a shape or a dtype that differs raises ``ArrayFormatError``
  naming it (the first one first), and the module is left as it was.

``to_numpy_params`` converts a mapping that holds tensors (a ``state_dict()``
put straight into ``FLModel.params``) the same way. ``ScaffoldCorrection``
is SCAFFOLD's local step correction (``shoal.client.scaffold``);
``proximal_term`` is FedProx's term for the loss
(``loss = loss_fn(...) + proximal_term(model, task)``).

Needs PyTorch (``pip install 'shoal[pt]'``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shoal.errors import ArrayFormatError, ConfigError

if TYPE_CHECKING:
    from shoal.client.model import FLModel

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ConfigError(
        f"shoal.frameworks.torch needs PyTorch ({exc}); install shoal[pt]: pip install 'shoal[pt]'"
    ) from exc

from shoal.frameworks._torch_prox import proximal_term  # noqa: E402 - needs torch, checked above

__all__ = [
    "ScaffoldCorrection",
    "TorchAdapter",
    "get_weights",
    "proximal_term",
    "save",
    "set_weights",
    "to_numpy_params",
]

logger = logging.getLogger(__name__)

# Shown in error messages; more names than this are summarised by a count.
_MAX_LISTED = 5

#: torch dtype -> numpy dtype, for the dtypes numpy has. bfloat16 is apart
#: (ml_dtypes, imported when one is seen).
_NUMPY_DTYPES: dict[torch.dtype, np.dtype[Any]] = {
    torch.bool: np.dtype(np.bool_),
    torch.uint8: np.dtype(np.uint8),
    torch.int8: np.dtype(np.int8),
    torch.int16: np.dtype(np.int16),
    torch.int32: np.dtype(np.int32),
    torch.int64: np.dtype(np.int64),
    torch.float16: np.dtype(np.float16),
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
}
# The wider unsigned types exist from PyTorch 2.3 on.
for _name in ("uint16", "uint32", "uint64"):
    if isinstance(getattr(torch, _name, None), torch.dtype):
        _NUMPY_DTYPES[getattr(torch, _name)] = np.dtype(_name)

#: Same-size signed integer types: a tensor or an array viewed as one is
#: copied as bits, never as values, so no NaN is ever quieted.
_TORCH_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bfloat16() -> np.dtype[Any]:
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - a dependency of shoal
        raise ArrayFormatError(
            "bfloat16 tensors need the ml_dtypes package (a dependency of shoal): "
            "pip install ml_dtypes"
        ) from None
    return np.dtype(ml_dtypes.bfloat16)


def _supported() -> str:
    return ", ".join(sorted(str(d).removeprefix("torch.") for d in _NUMPY_DTYPES) + ["bfloat16"])


def _numpy_dtype(dtype: torch.dtype, name: str) -> np.dtype[Any]:
    if dtype == torch.bfloat16:
        return _bfloat16()
    found = _NUMPY_DTYPES.get(dtype)
    if found is None:
        raise ArrayFormatError(
            f"tensor {name!r}: dtype {str(dtype).removeprefix('torch.')} cannot travel "
            f"(supported: {_supported()})"
        )
    return found


def _bits(arr: np.ndarray) -> np.ndarray:
    """``arr`` viewed as same-size signed integers (native byte order)."""
    return arr.view(f"i{arr.dtype.itemsize}")


def _to_numpy(tensor: torch.Tensor, name: str) -> np.ndarray:
    """``tensor``'s values as numpy, bit for bit: a view of a CPU tensor's
    memory, one copy to host for a tensor on another device."""
    if tensor.layout != torch.strided:
        raise ArrayFormatError(
            f"tensor {name!r}: a {tensor.layout} tensor cannot travel; make it dense (.to_dense())"
        )
    if tensor.is_meta or torch.nn.parameter.is_lazy(tensor):
        raise ArrayFormatError(
            f"tensor {name!r} holds no data yet (a meta tensor or an uninitialized lazy "
            "parameter): materialize the module (run one forward pass) first"
        )
    dtype = _numpy_dtype(tensor.dtype, name)
    t = tensor.detach()
    if t.dtype == torch.bfloat16:
        # numpy cannot hold a torch bfloat16: take its bits as int16.
        t = t.view(torch.int16)
    if t.device.type != "cpu":
        t = t.cpu()
    return t.numpy().view(dtype)


def _extent(t: torch.Tensor) -> tuple[int, int]:
    """The bytes ``t`` spans in its storage: [first, last + 1)."""
    first = int(t.storage_offset())
    last = first + sum(int((n - 1) * stride) for n, stride in zip(t.shape, t.stride(), strict=True))
    itemsize = t.element_size()
    return first * itemsize, (last + 1) * itemsize


class _Entries:
    """The tensors of a state dict, with tied keys found.

    ``primary``: key -> tensor for the first key of each tensor; ``tied``:
    a later key of the same tensor -> the first key; ``overlapping``: keys
    whose memory overlaps an earlier, different tensor's (a view of part of
    it), which :func:`get_weights` copies so that no two arrays it hands out
    share memory (an aggregator may write into them).
    """

    def __init__(self, items: Iterator[tuple[str, torch.Tensor]]) -> None:
        self.primary: dict[str, torch.Tensor] = {}
        self.tied: dict[str, str] = {}
        self.overlapping: set[str] = set()
        self.all: dict[str, torch.Tensor] = {}
        same: dict[tuple[Any, ...], str] = {}
        spans: dict[tuple[Any, ...], list[tuple[int, int]]] = {}
        for name, t in items:
            self.all[name] = t
            if (
                torch.nn.parameter.is_lazy(t)
                or t.layout != torch.strided
                or t.is_meta
                or t.numel() == 0
            ):
                # Nothing to share (an error later, for all but the empty).
                self.primary[name] = t
                continue
            storage = (t.device, t.untyped_storage().data_ptr())
            key = (*storage, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
            first = same.get(key)
            if first is not None:
                self.tied[name] = first
                continue
            same[key] = name
            self.primary[name] = t
            begin, end = _extent(t)
            seen = spans.setdefault(storage, [])
            if any(b < end and begin < e for b, e in seen):
                self.overlapping.add(name)
            seen.append((begin, end))


def _state_entries(module: Any) -> _Entries:
    if not isinstance(module, torch.nn.Module):
        raise ArrayFormatError(
            f"expected a torch.nn.Module, got {type(module).__module__}.{type(module).__qualname__}"
        )
    state = module.state_dict()
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ArrayFormatError(
                f"state-dict entry {name!r} is a {type(value).__name__}, not a tensor "
                "(a module's get_extra_state()?): only tensors are federated"
            )
    return _Entries(iter(state.items()))


def get_weights(module: Any) -> dict[str, np.ndarray]:
    """Every entry of ``module.state_dict()`` as numpy, under its key; a tied
    key's tensor only once, under its first key.

    Arrays are views of a CPU module's own memory (copy them to keep them
    while the module trains); tensors on another device are copied to host.
    """
    entries = _state_entries(module)
    if not entries.all:
        logger.debug("module %s has an empty state dict", type(module).__name__)
    out: dict[str, np.ndarray] = {}
    for name, tensor in entries.primary.items():
        arr = _to_numpy(tensor, name)
        out[name] = arr.copy() if name in entries.overlapping else arr
    return out


def to_numpy_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with every torch tensor as a numpy array of the same dtype,
    bit for bit (no silent cast: bfloat16 stays bfloat16); other values as
    they are. A tensor given under two keys (tied weights in a
    ``state_dict()``) is kept under the first only, as :func:`get_weights`
    does, so the names match the server's model.

        fl.send(fl.FLModel(params=to_numpy_params(model.state_dict()), ...))
    """
    tensors = ((k, v) for k, v in params.items() if isinstance(v, torch.Tensor))
    entries = _Entries(tensors)
    out: dict[str, Any] = {}
    for name, value in params.items():
        if not isinstance(value, torch.Tensor):
            out[name] = value
        elif name in entries.primary:
            arr = _to_numpy(value, name)
            out[name] = arr.copy() if name in entries.overlapping else arr
    return out


def _listed(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _as_array(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return _to_numpy(value, name)
    arr = np.asarray(value)
    if not arr.dtype.isnative:  # big-endian data: compare and copy as values
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _check_live(module: torch.nn.Module, entries: _Entries) -> None:
    """Every state-dict tensor must be the module's own memory, or copying into
    it would load nothing (a custom ``_save_to_state_dict`` may hand out copies)."""
    own = {
        (t.device, t.untyped_storage().data_ptr())
        for t in (*module.parameters(), *module.buffers())
        if t.numel()
    }
    for name, t in entries.primary.items():
        if t.numel() and (t.device, t.untyped_storage().data_ptr()) not in own:
            raise ArrayFormatError(
                f"state-dict entry {name!r} is not memory of a parameter or buffer of the "
                "module (a custom _save_to_state_dict?): set_weights cannot load it in place"
            )


def set_weights(module: Any, params: Mapping[str, Any]) -> None:
    """Load ``params`` (keys from :func:`get_weights`) into ``module`` in place.

    Every state-dict entry must be given (a tied key may be left out, or given
    with the same values as its first key), with the module's exact shape and
    dtype; nothing is copied unless all of them match. Values may be numpy
    arrays or tensors; each is copied bit for bit into the existing tensor, on
    that tensor's device.
    """
    entries = _state_entries(module)
    missing = [n for n in entries.primary if n not in params]
    unexpected = [n for n in params if n not in entries.all]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_listed(missing)}")
        if unexpected:
            parts.append(f"unexpected {_listed(unexpected)}")
        raise ArrayFormatError(
            f"weights do not match the module ({'; '.join(parts)}); its state dict has "
            f"{len(entries.primary)} entries named like {next(iter(entries.primary), '?')!r}"
        )
    values: dict[str, np.ndarray] = {}
    for name, target in entries.all.items():
        if name not in params:  # a tied key left out
            continue
        value = _as_array(params[name], name)
        shape = tuple(target.shape)
        if value.shape != shape:
            raise ArrayFormatError(
                f"weight {name!r}: shape {value.shape} differs from the module's {shape}"
            )
        dtype = _numpy_dtype(target.dtype, name)
        if value.dtype != dtype:
            raise ArrayFormatError(
                f"weight {name!r}: dtype {value.dtype.name} differs from the module's "
                f"{dtype.name} (convert it before sending: shoal never casts weights silently)"
            )
        first = entries.tied.get(name)
        if first is None:
            values[name] = value
        elif not np.array_equal(_bits(value), _bits(values[first])):
            raise ArrayFormatError(
                f"weight {name!r} is tied to {first!r} (one tensor) but its values differ"
            )
    _check_live(module, entries)
    for name, value in values.items():
        _copy_into(entries.primary[name], value)


def _copy_into(target: torch.Tensor, value: np.ndarray) -> None:
    """Copy ``value``'s bits into ``target`` in place, on ``target``'s device."""
    if target.numel() == 0:
        return
    bits = target.view(_TORCH_BITS[target.element_size()])
    if target.device.type == "cpu":
        # Through numpy: no temporary, and read-only (memory-mapped) values
        # need no copy first (torch.from_numpy warns on them).
        np.copyto(bits.numpy(), _bits(value))
        return
    src = _bits(value)
    if not src.flags.writeable:
        src = src.copy()
    with torch.no_grad():
        bits.copy_(torch.from_numpy(src))


def save(module: Any, path: Path) -> None:
    """Save ``module.state_dict()`` at ``path`` with ``torch.save`` (a ``.pt`` file:
    ``module.load_state_dict(torch.load(path))`` reads it back)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), str(path))


class TorchAdapter:
    """:class:`shoal.frameworks.FrameworkAdapter` for ``torch.nn.Module``."""

    name = "torch"
    suffix = ".pt"

    def get_weights(self, model: Any) -> dict[str, np.ndarray]:
        return get_weights(model)

    def set_weights(self, model: Any, params: Mapping[str, np.ndarray]) -> None:
        set_weights(model, params)

    def save(self, model: Any, path: Path) -> None:
        save(model, path)


def _tensor_like(value: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """``value`` (the dtype ``like`` has in numpy) as a tensor on ``like``'s device."""
    bits = np.ascontiguousarray(_bits(value))
    return torch.from_numpy(bits).view(like.dtype).to(like.device)


class ScaffoldCorrection:
    """SCAFFOLD's correction of a PyTorch module's local steps (Karimireddy et
    al. 2020, option II), one call per step::

        set_weights(model, task.params)
        scaffold = ScaffoldCorrection(model, task, fl.state_dir())   # c from the task, c_i kept there
        for xb, yb in batches:
            optimizer.zero_grad()
            loss_fn(model(xb), yb).backward()
            scaffold.apply()                           # grad += c - c_i
            optimizer.step()
        extras = scaffold.result(lr=lr)                # delta c_i; c_i+ saved at the site
        fl.send(fl.FLModel(params=get_weights(model), extras=extras, num_examples=n))

    The corrected weights are the module's floating parameters that require
    a gradient, under their ``named_parameters()`` names (the state-dict
    keys); buffers (batch-norm statistics, ``num_batches_tracked``) are not
    corrected. ``c_i`` is kept in ``state_dir``: the site's state folder for
    the job, ``shoal.client.state_dir()``, so that it survives the worker.
    Build it after loading the task's weights; ``result`` reads the trained
    parameters.
    """

    def __init__(self, model: Any, task: FLModel, state_dir: str | os.PathLike[str]) -> None:
        from shoal.client.scaffold import ControlVariates

        if not isinstance(model, torch.nn.Module):
            raise ArrayFormatError(
                f"expected a torch.nn.Module, got {type(model).__module__}."
                f"{type(model).__qualname__}"
            )
        self._params = [
            (name, p)
            for name, p in model.named_parameters()
            if p.requires_grad and p.is_floating_point()
        ]
        self.variates = ControlVariates(task, state_dir, names=[n for n, _ in self._params])
        correction = self.variates.correction
        #: (parameter, c - c_i on its device); empty while the correction is 0.
        self._pairs = (
            []
            if self.variates.is_zero
            else [(p, _tensor_like(correction[name], p)) for name, p in self._params]
        )
        #: Calls of :meth:`apply` so far: the local steps taken.
        self.steps = 0

    def apply(self) -> None:
        """Add ``c - c_i`` to each corrected parameter's gradient (call it
        after ``backward()``, before ``optimizer.step()``); counts a step."""
        with torch.no_grad():
            for p, correction in self._pairs:
                if p.grad is not None:
                    p.grad.add_(correction)
        self.steps += 1

    def result(self, *, lr: float, num_steps: int | None = None) -> dict[str, np.ndarray]:
        """The extras to send (``delta_c/<name>``: ``c_i+ - c_i``), having
        saved ``c_i+ = c_i - c + (x - y_i) / (K * lr)`` at the site. ``lr``:
        the local learning rate; ``num_steps`` (``K``): the local steps,
        by default the calls of :meth:`apply`."""
        steps = self.steps if num_steps is None else num_steps
        y = {name: _to_numpy(p, name) for name, p in self._params}
        return self.variates.update(y, num_steps=steps, lr=lr)
