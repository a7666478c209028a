"""SCAFFOLD at a site: the control variates, in numpy (Karimireddy et al.,
ICML 2020, Algorithm 1, option II).

The server's control variate ``c`` comes down with the model, as
``task.extras["c/<name>"]`` (none in round 1: zero). The site's own ``c_i``
is kept in the site's state folder for the job (``shoal.client.state_dir()``),
so it outlives the round and the worker. Each local step uses the gradient
``g - c_i + c``; after ``K`` steps of learning rate ``lr`` from the global
model ``x`` to ``y_i``::

    c_i+ = c_i - c + (x - y_i) / (K * lr)         (option II)
    delta_c_i = c_i+ - c_i                        sent up as extras "delta_c/<name>"

A numpy script uses it directly (the framework helpers in
``shoal.frameworks.torch`` and ``shoal.frameworks.keras`` wrap it)::

    cv = ControlVariates(task, fl.state_dir())       # c from the task, c_i kept there
    for _ in range(steps):
        g = gradient(w)
        w -= lr * (g + cv.correction[name])          # correction = c - c_i
    extras = cv.update(new_params, num_steps=steps, lr=lr)   # saves c_i+
    fl.send(fl.FLModel(params=new_params, extras=extras, num_examples=n))

Control variates are kept for the names given (default: every floating
array of the task), in each one's dtype; the arithmetic is done in float32
(float64 for float64 weights), one array at a time. Memory beyond the task
(which brings ``x`` and ``c``): ``c_i``, the correction and a copy of ``x``
(a script may train the task's arrays in place), three times the corrected
weights.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from shoal.arrays import is_floating, load_arrays, read_header, save_arrays
from shoal.client.model import FLModel
from shoal.errors import ArrayFormatError, ConfigError

__all__ = ["C_PREFIX", "DELTA_PREFIX", "STATE_FILE", "ControlVariates"]

log = logging.getLogger(__name__)

#: The server's control variate of weight ``w`` travels down as extra ``c/w``.
C_PREFIX = "c/"
#: A site's change of its control variate of ``w`` travels up as ``delta_c/w``.
DELTA_PREFIX = "delta_c/"
#: The site's control variates, in its state folder for the job.
STATE_FILE = "scaffold_c_i.safetensors"


class ControlVariates:
    """One round of SCAFFOLD at a site: ``c`` and ``c_i`` for ``names``.

    ``task`` is the round's task (its ``params`` are the global model ``x``,
    its ``extras`` hold ``c``); ``state_dir`` where ``c_i`` is kept: the
    site's state folder for the job, ``shoal.client.state_dir()``, which
    outlives the worker; ``names`` the weights to correct (default: every
    floating array of ``task.params``; the framework helpers give the
    trainable parameters, not buffers such as batch-norm statistics).
    """

    def __init__(
        self,
        task: FLModel,
        state_dir: str | os.PathLike[str],
        *,
        names: Iterable[str] | None = None,
    ) -> None:
        x = task.params
        if names is None:
            names = [n for n, a in x.items() if is_floating(np.asarray(a).dtype)]
        self.names = list(names)
        self.round = task.current_round
        for name in self.names:
            if name not in x:
                raise ArrayFormatError(f"SCAFFOLD: {name!r} is not a weight of the task's model")
            if not is_floating(np.asarray(x[name]).dtype):
                raise ArrayFormatError(f"SCAFFOLD: {name!r} is not a floating-point weight")
        #: The global model this round started from: a copy, since a script
        #: may train the task's own arrays in place.
        self.x: dict[str, np.ndarray] = {n: np.array(x[n], copy=True) for n in self.names}
        self.path = Path(state_dir) / STATE_FILE
        self.c = self._server_variate(task.extras)
        #: ``c_i`` as this round found it, and the round that computed it
        #: (None: none was kept, ``c_i = 0``).
        self.c_i, self.loaded_round = self._load()
        #: ``c - c_i`` per name, in the weight's dtype: what each local step
        #: adds to the gradient.
        self.correction: dict[str, np.ndarray] = {
            n: (_work(self.c[n]) - _work(self.c_i[n])).astype(self.x[n].dtype) for n in self.names
        }
        #: True while ``c`` and ``c_i`` are both zero (the first round of a
        #: site): the correction is zero and may be skipped.
        self.is_zero = not any(np.any(self.correction[n]) for n in self.names)

    def _server_variate(self, extras: Mapping[str, Any]) -> dict[str, np.ndarray]:
        mine = {k[len(C_PREFIX) :]: v for k, v in extras.items() if k.startswith(C_PREFIX)}
        unknown = sorted(set(mine) - set(self.names))
        if unknown:
            raise ArrayFormatError(
                f"SCAFFOLD: the task's control variate names {unknown[0]!r}, which is not "
                f"a weight this site corrects ({len(self.names)} weights, e.g. "
                f"{next(iter(self.names), '?')!r})"
            )
        c: dict[str, np.ndarray] = {}
        for name in self.names:
            value = mine.get(name)
            if value is None:  # round 1: c = 0
                c[name] = np.zeros_like(self.x[name])
                continue
            value = np.asarray(value)
            _check_like(value, self.x[name], f"the task's control variate {name!r}")
            c[name] = value
        return c

    def _load(self) -> tuple[dict[str, np.ndarray], int | None]:
        """``c_i`` and the round it was computed in (None: a fresh site)."""
        if not self.path.exists():
            return {n: np.zeros_like(self.x[n]) for n in self.names}, None
        try:
            stored = load_arrays(self.path, mmap=False)
            with open(self.path, "rb") as f:
                meta = read_header(f, os.fstat(f.fileno()).st_size)[0].metadata
        except (OSError, ArrayFormatError) as exc:
            raise ConfigError(
                f"SCAFFOLD: cannot read this site's c_i ({self.path}): {exc}"
            ) from exc
        if set(stored) != set(self.names):
            missing = sorted(set(self.names) - set(stored))
            extra = sorted(set(stored) - set(self.names))
            raise ArrayFormatError(
                f"SCAFFOLD: this site's c_i ({self.path}) does not fit the model "
                f"(missing {missing[:3]}, unexpected {extra[:3]}): was the model changed "
                "in the middle of the job?"
            )
        for name in self.names:
            _check_like(stored[name], self.x[name], f"this site's c_i {name!r}")
        saved = meta.get("round")
        loaded_round = int(saved) if saved and saved.isdigit() else None
        log.info("SCAFFOLD: c_i of round %s read from %s", loaded_round, self.path)
        return {n: stored[n] for n in self.names}, loaded_round

    def update(self, y: Mapping[str, Any], *, num_steps: int, lr: float) -> dict[str, np.ndarray]:
        """``c_i+ = c_i - c + (x - y) / (num_steps * lr)`` (option II): saves
        it as this site's ``c_i`` and returns the extras to send,
        ``{"delta_c/<name>": c_i+ - c_i}``. ``y`` holds the trained weights
        (at least ``names``); ``num_steps`` the local steps taken (> 0) and
        ``lr`` their learning rate (> 0)."""
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
            raise ConfigError(f"SCAFFOLD: num_steps must be an integer, got {num_steps!r}")
        if num_steps <= 0:
            raise ConfigError(
                f"SCAFFOLD: num_steps is {num_steps}; c_i needs at least one local step"
            )
        if not (isinstance(lr, (int, float, np.floating)) and np.isfinite(lr) and lr > 0):
            raise ConfigError(f"SCAFFOLD: lr must be a finite number > 0, got {lr!r}")
        scale = 1.0 / (float(num_steps) * float(lr))
        c_i_next: dict[str, np.ndarray] = {}
        extras: dict[str, np.ndarray] = {}
        for name in self.names:
            if name not in y:
                raise ArrayFormatError(f"SCAFFOLD: the trained weights lack {name!r}")
            y_n = np.asarray(y[name])
            _check_like(y_n, self.x[name], f"the trained weight {name!r}")
            dtype = self.x[name].dtype
            # delta c_i = c_i+ - c_i = (x - y) / (K lr) - c, one array at a time.
            delta = _work(self.x[name]) - _work(y_n)
            delta *= scale
            delta -= _work(self.c[name])
            new = _work(self.c_i[name]) + delta
            if not (np.isfinite(new).all() and np.isfinite(delta).all()):
                raise ArrayFormatError(
                    f"SCAFFOLD: c_i of {name!r} is not finite (did training diverge?)"
                )
            c_i_next[name] = new.astype(dtype)
            extras[DELTA_PREFIX + name] = delta.astype(dtype)
        # Atomic: a worker killed while saving leaves the previous c_i whole.
        save_arrays(
            self.path,
            c_i_next,
            {"round": str(self.round) if self.round is not None else ""},
        )
        self.c_i = c_i_next
        return extras


def _work(a: np.ndarray) -> np.ndarray:
    """``a`` in the dtype to compute in: float64 stays, the rest is float32
    (half precision would round the small differences away; float64 for a
    float32 model would double the temporaries of its largest layer)."""
    return a.astype(np.float64 if a.dtype == np.float64 else np.float32)


def _check_like(value: np.ndarray, like: np.ndarray, what: str) -> None:
    if value.shape != like.shape or value.dtype != like.dtype:
        raise ArrayFormatError(
            f"SCAFFOLD: {what} is {value.dtype}{list(value.shape)}, the weight "
            f"{like.dtype}{list(like.shape)}"
        )
