"""Framework adapters: a model's weights as ``{stable name: numpy array}``.

The Client API and the workflows speak only ``dict[str, np.ndarray]``. An
adapter converts a framework's model to and from that dict, with names that
are the same on every site and in every process, so that the server can match
one site's ``"layers.1.0.kernel"`` with another's.

    from shoal.frameworks import adapter_for

    adapter = adapter_for(model)            # Keras model -> the Keras adapter
    params = adapter.get_weights(model)
    adapter.set_weights(model, params)
    adapter.save(model, Path("final" + adapter.suffix))

Adapters for optional frameworks live in their own modules
(``shoal.frameworks.keras``, ``shoal.frameworks.torch``) and are imported
only when a model of that kind is seen, so a numpy-only job never imports
TensorFlow or PyTorch.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from shoal.errors import ConfigError

__all__ = [
    "FrameworkAdapter",
    "adapter_for",
    "as_numpy_params",
    "is_keras_model",
    "is_torch_module",
]


@runtime_checkable
class FrameworkAdapter(Protocol):
    """Converts one framework's models to and from named numpy arrays."""

    #: Short framework name, e.g. ``"keras"``.
    name: str
    #: File suffix :meth:`save` uses, e.g. ``".keras"``.
    suffix: str

    def get_weights(self, model: Any) -> dict[str, np.ndarray]:
        """Every weight of ``model`` (trainable or not) under a stable name."""

    def set_weights(self, model: Any, params: Mapping[str, np.ndarray]) -> None:
        """Load ``params`` into ``model``; raises ArrayFormatError on a mismatch."""

    def save(self, model: Any, path: Path) -> None:
        """Save ``model`` in the framework's own format at ``path``."""


# Module prefixes whose Layer/Model classes the Keras adapter handles: Keras 3,
# the legacy tf_keras package, and TensorFlow's bundled copy.
_KERAS_MODULES = ("keras.", "tf_keras.", "tensorflow.")


def is_keras_model(model: object) -> bool:
    """True if ``model`` is a Keras layer or model (checked without importing Keras)."""
    for cls in type(model).__mro__:
        if cls.__name__ in ("Layer", "Model") and cls.__module__.startswith(_KERAS_MODULES):
            return True
    return False


def is_torch_module(model: object) -> bool:
    """True if ``model`` is a ``torch.nn.Module``. Never imports PyTorch: a
    process that has not imported it holds no module."""
    torch = sys.modules.get("torch")
    nn = getattr(torch, "nn", None)
    module_class = getattr(nn, "Module", None)
    return isinstance(module_class, type) and isinstance(model, module_class)


def _is_array_dict(model: object) -> bool:
    return (
        isinstance(model, Mapping)
        and bool(model)
        and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in model.items())
    )


def adapter_for(model: object) -> FrameworkAdapter:
    """The adapter for ``model``'s framework.

    Detection looks at the model's class hierarchy only, so it never imports
    a framework the caller has not already imported. Supported: Keras models
    (``shoal[tf]``), PyTorch modules (``shoal[pt]``) and plain
    ``dict[str, np.ndarray]`` models.
    """
    if is_keras_model(model):
        from shoal.frameworks.keras import KerasAdapter

        return KerasAdapter()
    if is_torch_module(model):
        from shoal.frameworks.torch import TorchAdapter

        return TorchAdapter()
    if _is_array_dict(model):
        from shoal.frameworks.ndarrays import NDArraysAdapter

        return NDArraysAdapter()
    kind = type(model)
    raise ConfigError(
        f"no shoal framework adapter for a {kind.__module__}.{kind.__qualname__}; "
        "supported: Keras models (install shoal[tf]), PyTorch modules (shoal[pt]) "
        "and dict[str, numpy.ndarray]"
    )


def as_numpy_params(params: Mapping[str, Any]) -> Mapping[str, Any]:
    """``params`` with any PyTorch tensor in it as a numpy array, bit for bit
    (``shoal.frameworks.torch.to_numpy_params``); ``params`` itself when
    PyTorch is not imported, so no tensor can be in it.

        fl.send(fl.FLModel(params=as_numpy_params(model.state_dict()), ...))
    """
    if "torch" not in sys.modules:
        return params
    from shoal.frameworks.torch import to_numpy_params

    return to_numpy_params(params)
