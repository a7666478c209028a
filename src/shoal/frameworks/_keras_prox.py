"""FedProx's proximal term for Keras (``shoal.frameworks.keras``): a tensor
for a custom training loop, and a callback for ``fit``."""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from shoal.client.model import FLModel
from shoal.errors import ArrayFormatError, ConfigError
from shoal.frameworks._keras_names import named_variables
from shoal.frameworks.proximal import ProximalSource, proximal_source

__all__ = ["ProximalTerm", "proximal_term"]


@dataclass
class _Anchor:
    """A model's copy of a round's global weights (non-trainable variables,
    made once per model and filled again each round) and ``mu``."""

    #: (trainable variable, its global value): the pairs the term sums over.
    pairs: list[tuple[Any, Any]]
    mu: Any
    #: The mapping last copied in: the same object means the same round.
    source: Mapping[str, Any] | None = None
    #: The variables' regularizers include the term (``ProximalTerm``).
    attached: bool = False


_ANCHORS: weakref.WeakKeyDictionary[Any, _Anchor] = weakref.WeakKeyDictionary()


def _trainable(model: Any) -> list[tuple[str, Any]]:
    names = {id(v): name for name, v in named_variables(model).items()}
    return [(names[id(v)], v) for v in model.trainable_variables]


def _anchor(model: Any) -> _Anchor:
    anchor = _ANCHORS.get(model)
    if anchor is None:
        pairs = [
            (v, keras.Variable(np.zeros(tuple(v.shape)), dtype=v.dtype, trainable=False))
            for _, v in _trainable(model)
        ]
        anchor = _ANCHORS[model] = _Anchor(
            pairs=pairs, mu=keras.Variable(0.0, dtype="float32", trainable=False)
        )
    return anchor


def _fill(model: Any, anchor: _Anchor, params: Mapping[str, Any]) -> None:
    """Copies ``params`` into the anchor, if they are not what it holds."""
    if anchor.source is params:
        return
    for (name, v), (_, g) in zip(_trainable(model), anchor.pairs, strict=True):
        if name not in params:
            raise ArrayFormatError(
                f"proximal_term: the global weights have no {name!r} "
                "(a trainable variable of the model)"
            )
        value = np.asarray(params[name])
        if value.shape != tuple(v.shape):
            raise ArrayFormatError(
                f"proximal_term: {name!r} has shape {value.shape} in the global weights, "
                f"{tuple(v.shape)} in the model"
            )
        g.assign(value.astype(np.float32) if value.dtype.kind != "f" else value)
    anchor.source = params


def _term(anchor: _Anchor, mu: Any) -> Any:
    ops = keras.ops
    total = None
    for v, g in anchor.pairs:
        t = ops.sum(ops.square(v - g))
        total = t if total is None else total + ops.cast(t, total.dtype)
    if total is None:
        return ops.zeros(())
    return total * ops.cast(mu, total.dtype) / 2


def _eager() -> bool:
    if keras.config.backend() != "tensorflow":
        return True
    import tensorflow as tf

    return bool(tf.executing_eagerly())


def proximal_term(
    model: Any, global_params: FLModel | Mapping[str, Any], mu: float | None = None
) -> Any:
    """FedProx's ``(mu / 2) * sum ||w - w_global||**2`` over ``model``'s
    trainable variables, a scalar tensor to add to the loss in a custom
    training loop::

        task = fl.receive()
        set_weights(model, task.params)
        for x, y in dataset:
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True)) + proximal_term(model, task)
            ...

    ``global_params`` is the task (``mu`` then defaults to its
    ``fedprox_mu``) or its weights (then pass ``mu``). The global weights
    are copied into variables of their own once per round, not per batch.
    Call it eagerly: inside a ``tf.function`` the round's weights would be
    read once, when it is traced (ConfigError); with ``model.fit``, use
    :class:`ProximalTerm`.
    """
    if not _eager():
        raise ConfigError(
            "proximal_term: called inside a tf.function, where it would keep the first "
            "round's global weights; call it eagerly, or use ProximalTerm with model.fit"
        )
    source = proximal_source(global_params, mu)
    anchor = _anchor(model)
    _fill(model, anchor, source.params)
    return _term(anchor, source.mu)


class _Regularizer:
    """A variable's own regularizer (if any) plus its share of the term."""

    def __init__(self, previous: Any, anchor: _Anchor, target: Any) -> None:
        self.previous, self.anchor, self.target = previous, anchor, target

    def __call__(self, w: Any) -> Any:
        ops = keras.ops
        own = ops.sum(ops.square(w - self.target)) * ops.cast(self.anchor.mu, w.dtype) / 2
        return own if self.previous is None else self.previous(w) + own


class ProximalTerm(keras.callbacks.Callback):
    """FedProx with ``model.fit``: the term joins the loss while ``fit`` runs::

        task = fl.receive()
        set_weights(model, task.params)
        model.fit(x, y, epochs=2, callbacks=[ProximalTerm(task)])

    When training begins it copies the task's weights (``global_params``:
    the task, or its weights with ``mu``) into the model's anchor variables
    and adds the term to each trainable variable's regularizer (once per
    model, keeping a regularizer the variable had); when training ends it
    sets ``mu`` to 0, so ``evaluate`` reports the plain loss. A model fitted
    before without it has its train function traced again, once.
    """

    def __init__(self, global_params: FLModel | Mapping[str, Any], mu: float | None = None) -> None:
        super().__init__()
        self._source: ProximalSource = proximal_source(global_params, mu)

    def on_train_begin(self, logs: Any = None) -> None:
        model = self.model
        anchor = _anchor(model)
        _fill(model, anchor, self._source.params)
        anchor.mu.assign(self._source.mu)
        if not anchor.attached:
            for v, g in anchor.pairs:
                v.regularizer = _Regularizer(v.regularizer, anchor, g)
            anchor.attached = True
            if getattr(model, "train_function", None) is not None:
                model.make_train_function(force=True)

    def on_train_end(self, logs: Any = None) -> None:
        _anchor(self.model).mu.assign(0.0)
