"""Keras weights as ``{stable name: numpy array}``.

Names come from positions, not from Keras's layer names: Keras numbers layers
per process (``dense``, ``dense_1``, ... ``dense_7``), so the same model built
on two sites, or twice in one process, gets different layer names. Here the
``j``-th weight of the ``i``-th entry of ``model.layers`` is called
``layers.{i}.{j}.{variable name}``, e.g. ``layers.1.0.kernel`` and
``layers.1.1.bias`` for a ``Flatten -> Dense`` model. Every weight is
federated, trainable or not (e.g. batch-norm moving statistics); optimizer
state and random-seed state are not.

    from shoal.frameworks.keras import get_weights, set_weights

    params = get_weights(model)        # {"layers.1.0.kernel": array(784, 128), ...}
    set_weights(model, params)

``ScaffoldCorrection`` is SCAFFOLD's local step correction
(``shoal.client.scaffold``). FedProx's term: ``proximal_term(model, task)``
in a custom loop, ``callbacks=[ProximalTerm(task)]`` with ``model.fit``.

Needs Keras (``pip install 'shoal[tf]'``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shoal.errors import ArrayFormatError, ConfigError

if TYPE_CHECKING:
    from shoal.client.model import FLModel

try:
    import keras  # noqa: F401 - imported to fail early with a clear message
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ConfigError(
        f"shoal.frameworks.keras needs Keras/TensorFlow ({exc}); install shoal[tf]: "
        "pip install 'shoal[tf]'"
    ) from exc

from shoal.frameworks._keras_names import named_variables  # noqa: E402 - needs keras
from shoal.frameworks._keras_prox import ProximalTerm, proximal_term  # noqa: E402

__all__ = [
    "KerasAdapter",
    "ProximalTerm",
    "ScaffoldCorrection",
    "get_weights",
    "named_variables",
    "proximal_term",
    "save",
    "set_weights",
]

logger = logging.getLogger(__name__)

# Shown in error messages; more names than this are summarised by a count.
_MAX_LISTED = 5


def _numpy_dtype(variable: Any) -> np.dtype[Any]:
    dtype = variable.dtype
    # tf_keras variables carry a tf.DType; Keras 3 a string such as "float32".
    return np.dtype(getattr(dtype, "as_numpy_dtype", dtype))


def get_weights(model: Any) -> dict[str, np.ndarray]:
    """Every weight of ``model`` as a fresh numpy array under its stable name."""
    variables = named_variables(model)
    if not variables:
        logger.debug("model %s has no weights (is it built?)", type(model).__name__)
    return {name: np.array(v.numpy()) for name, v in variables.items()}


def _listed(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def set_weights(model: Any, params: Mapping[str, np.ndarray]) -> None:
    """Load ``params`` (names from :func:`get_weights`) into ``model``.

    Every weight of the model must be given, with its exact shape; nothing is
    assigned unless all of them match. Values are cast to each variable's dtype.
    """
    variables = named_variables(model)
    if not variables and params:
        raise ArrayFormatError(
            f"model {type(model).__name__} has no weights yet: build it (give it an "
            "Input or call it once) before setting weights"
        )
    missing = [n for n in variables if n not in params]
    unexpected = [n for n in params if n not in variables]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_listed(missing)}")
        if unexpected:
            parts.append(f"unexpected {_listed(unexpected)}")
        raise ArrayFormatError(
            f"weights do not match the model ({'; '.join(parts)}); the model has "
            f"{len(variables)} weights named like {next(iter(variables), '?')!r}"
        )
    values: list[tuple[Any, np.ndarray]] = []
    for name, variable in variables.items():
        value = np.asarray(params[name])
        shape = tuple(int(d) for d in variable.shape)
        if value.shape != shape:
            raise ArrayFormatError(
                f"weight {name!r}: shape {value.shape} differs from the model's {shape}"
            )
        values.append((variable, value.astype(_numpy_dtype(variable), copy=False)))
    for variable, value in values:
        variable.assign(value)


def save(model: Any, path: Path) -> None:
    """Save ``model`` in Keras's own format (``.keras``) at ``path``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    model.save(str(path))


class KerasAdapter:
    """:class:`shoal.frameworks.FrameworkAdapter` for Keras models."""

    name = "keras"
    suffix = ".keras"

    def get_weights(self, model: Any) -> dict[str, np.ndarray]:
        return get_weights(model)

    def set_weights(self, model: Any, params: Mapping[str, np.ndarray]) -> None:
        set_weights(model, params)

    def save(self, model: Any, path: Path) -> None:
        save(model, path)


class _OptimizerHook:
    """Adds a per-variable correction to every gradient an optimizer applies.

    Installed once per optimizer, in its ``apply`` (which ``apply_gradients``
    and Keras's ``train_step`` call): the corrections are Keras variables,
    read by the traced training function at each step, so a new round only
    assigns new values and nothing is traced again.
    """

    def __init__(self, optimizer: Any) -> None:
        self.optimizer = optimizer
        #: id(model variable) -> its correction (a non-trainable variable).
        self.corrections: dict[int, Any] = {}
        original = optimizer.apply

        def apply(grads: Sequence[Any], trainable_variables: Any = None) -> Any:
            if trainable_variables is None:
                variables = list(optimizer._trainable_variables)
            else:
                trainable_variables = list(trainable_variables)
                variables = trainable_variables
            # Gradients reach apply() multiplied by the loss scale, if any.
            scale = getattr(optimizer, "loss_scale_factor", None)
            corrected = []
            for g, v in zip(grads, variables, strict=True):
                d = self.corrections.get(id(v))
                if g is not None and d is not None:
                    g = g + (d if scale is None else d * scale)
                corrected.append(g)
            return original(corrected, trainable_variables)

        optimizer.apply = apply

    @classmethod
    def of(cls, model: Any) -> _OptimizerHook:
        optimizer = getattr(model, "optimizer", None)
        if optimizer is None:
            raise ConfigError("SCAFFOLD: compile the Keras model (with its optimizer) first")
        hook = getattr(optimizer, "_shoal_scaffold_hook", None)
        if hook is None:
            hook = cls(optimizer)
            optimizer._shoal_scaffold_hook = hook
            # A training function traced before the hook would not call it.
            if getattr(model, "train_function", None) is not None:
                model.train_function = None
        return hook

    def set(self, variables: Mapping[str, Any], values: Mapping[str, np.ndarray] | None) -> None:
        """The corrections of ``variables`` (zero where ``values`` is None)."""
        import keras

        for name, v in variables.items():
            d = self.corrections.get(id(v))
            if d is None:
                d = self.corrections[id(v)] = keras.Variable(
                    np.zeros(tuple(v.shape), _numpy_dtype(v)),
                    trainable=False,
                    dtype=v.dtype,
                    name="shoal_scaffold_correction",
                )
            d.assign(
                values[name] if values is not None else np.zeros(tuple(v.shape), _numpy_dtype(v))
            )


class ScaffoldCorrection:
    """SCAFFOLD's correction of a Keras model's local steps (Karimireddy et
    al. 2020, option II), in one line around ``fit``::

        set_weights(model, task.params)
        scaffold = ScaffoldCorrection(model, task, fl.state_dir())  # c from the task, c_i kept there
        model.fit(x, y, epochs=2, batch_size=32)       # each step: grad + c - c_i
        extras = scaffold.result()                     # delta c_i; c_i+ saved at the site
        fl.send(fl.FLModel(params=get_weights(model), extras=extras, num_examples=n))

    The model must be compiled: the correction is added to each gradient its
    optimizer applies (``optimizer.apply``, which ``fit`` and
    ``apply_gradients`` call; the TensorFlow and PyTorch backends), so it
    goes through the optimizer as the gradient does. The corrected weights
    are the trainable floating variables (not batch-norm statistics), under
    their :func:`get_weights` names. ``c_i`` is kept in ``state_dir``: the
    site's state folder for the job, ``shoal.client.state_dir()``, so that it
    survives the worker.
    """

    def __init__(self, model: Any, task: FLModel, state_dir: str | os.PathLike[str]) -> None:
        import keras

        from shoal.arrays import is_floating
        from shoal.client.scaffold import ControlVariates

        if keras.backend.backend() == "jax":
            raise ConfigError(
                "SCAFFOLD's Keras helper needs the TensorFlow or PyTorch backend "
                "(JAX applies gradients statelessly, out of the optimizer's apply())"
            )
        self._variables = {
            name: v
            for name, v in named_variables(model).items()
            if getattr(v, "trainable", True) and is_floating(_numpy_dtype(v))
        }
        self.variates = ControlVariates(task, state_dir, names=list(self._variables))
        self._hook = _OptimizerHook.of(model)
        self._hook.set(self._variables, None if self.variates.is_zero else self.variates.correction)
        self._optimizer = self._hook.optimizer
        self._start = int(self._optimizer.iterations.numpy())

    @property
    def steps(self) -> int:
        """The optimizer's steps since this round's correction was set."""
        return int(self._optimizer.iterations.numpy()) - self._start

    def result(
        self, *, lr: float | None = None, num_steps: int | None = None
    ) -> dict[str, np.ndarray]:
        """The extras to send (``delta_c/<name>``: ``c_i+ - c_i``), having
        saved ``c_i+ = c_i - c + (x - y_i) / (K * lr)`` at the site, and
        the correction set back to zero (training outside a SCAFFOLD round
        is not corrected). ``lr`` defaults to the optimizer's current
        learning rate (give it when a schedule changes it), ``num_steps``
        (``K``) to the optimizer's steps since this object was made."""
        if lr is None:
            lr = float(np.asarray(self._optimizer.learning_rate))
        steps = self.steps if num_steps is None else num_steps
        y = {name: np.asarray(v.numpy()) for name, v in self._variables.items()}
        extras = self.variates.update(y, num_steps=steps, lr=lr)
        self._hook.set(self._variables, None)
        return extras
