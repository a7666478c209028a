"""The trivial adapter: a model that is already ``dict[str, np.ndarray]``.

Useful for numpy-only jobs (see ``examples/hello-numpy``): ``set_weights``
copies into the existing arrays so references a script holds stay valid.

    model = {"w": np.zeros(3), "b": np.zeros(1)}
    NDArraysAdapter().set_weights(model, fl.receive().params)
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from pathlib import Path

import numpy as np

from shoal.errors import ArrayFormatError

__all__ = ["NDArraysAdapter"]


class NDArraysAdapter:
    """:class:`shoal.frameworks.FrameworkAdapter` for ``dict[str, np.ndarray]``."""

    name = "numpy"
    suffix = ".safetensors"

    def get_weights(self, model: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: np.array(value) for name, value in model.items()}

    def set_weights(
        self, model: MutableMapping[str, np.ndarray], params: Mapping[str, np.ndarray]
    ) -> None:
        missing = sorted(set(model) - set(params))
        unexpected = sorted(set(params) - set(model))
        if missing or unexpected:
            raise ArrayFormatError(
                f"weights do not match the model (missing {missing}, unexpected {unexpected})"
            )
        for name, value in params.items():
            target = model[name]
            if np.shape(value) != target.shape:
                raise ArrayFormatError(
                    f"weight {name!r}: shape {np.shape(value)} differs from the model's "
                    f"{target.shape}"
                )
        for name, value in params.items():
            model[name][...] = value

    def save(self, model: Mapping[str, np.ndarray], path: Path) -> None:
        from shoal.arrays import save_arrays

        save_arrays(path, model)
