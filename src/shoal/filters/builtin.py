"""The built-in privacy filters, named in job.yml or a site's ``local/filters.yml``.

=======================  ========================  ===============================================
name                     points                    what it does
=======================  ========================  ===============================================
``exclude_vars``         result_out, result_in     the named variables' update becomes zero
``clip``                 result_out, result_in     the update's L2 norm to at most ``max_norm``
``gaussian``             result_out, result_in     N(0, sigma²) on every floating-point weight
``percentile_privacy``   result_out                Shokri & Shmatikov: share only the largest
                                                   updates, truncated to ``gamma``
``quantize``             result_out                the update as float16 or uint8 on the wire
``dequantize``           result_in                 back to the global model's dtypes
=======================  ========================  ===============================================

The *update* is the result minus the model the site received
(``FilterContext.reference``); a filter that works on it sends it as it
is (``params_type: diff``), which the server adds back to the global model.
Arguments are checked when the job or the site's file is read::

    filters:
      result_out:
        - {filter: clip, args: {max_norm: 1.0}}
        - {filter: gaussian, args: {sigma: 0.5, clip_norm: 1.0, delta: 1.0e-5}}

``gaussian`` with ``clip_norm`` and ``delta`` is local DP with accounting: it
adds this site's ε so far (``local_dp_epsilon``) to every result's metrics.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from shoal.arrays import is_floating
from shoal.client.model import FLModel
from shoal.filters.context import FilterContext
from shoal.privacy.accounting import gaussian_epsilon
from shoal.privacy.dp import add_gaussian, clip_update, noise_rng, update_of

__all__ = ["Clip", "ExcludeVars", "Gaussian", "PercentilePrivacy"]

log = logging.getLogger(__name__)

#: The points where a filter on the update can run: there is a reference model.
UPDATE_POINTS = ("result_out", "result_in")
#: Result meta key a site may set: its optimizer steps this round
#: (percentile privacy's ``gamma`` is per step, as in NVIDIA FLARE).
NUM_STEPS_KEY = "num_steps"


def positive(name: str, value: Any, *, zero: bool = False) -> float:
    """``value`` as a finite float > 0 (>= 0 with ``zero``), or ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x) or x < 0 or (x == 0 and not zero):
        raise ValueError(f"{name} must be a finite number {'>=' if zero else '>'} 0, got {value!r}")
    return x


def _as_diff(model: FLModel, update: dict[str, np.ndarray]) -> FLModel:
    return dataclasses.replace(model, params=update, params_type="diff")


def update_in(model: FLModel, ctx: FilterContext, who: str) -> dict[str, np.ndarray]:
    """The update ``model`` carries (its params minus the model the site
    received, or its diff as sent), for filter ``who``; at ``result_in`` a
    malformed result passes as it came, for the driver's checks to refuse."""
    return update_of(
        model.params,
        model.params_type,
        reference=ctx.reference,
        who=who,
        lenient=ctx.point == "result_in",
    )


class ExcludeVars:
    """The update of the variables named by ``names`` (shell globs, e.g.
    ``"encoder.*"``) or matched by ``regex`` becomes zero: the server
    learns nothing of them from this site (bool masks: the received value)."""

    POINTS = UPDATE_POINTS

    def __init__(self, *, names: Sequence[str] | None = None, regex: str | None = None) -> None:
        if (names is None) == (regex is None):
            raise ValueError("give exactly one of names (a list of globs) or regex")
        if names is not None:
            if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
                raise ValueError(f"names must be a list of non-empty strings, got {names!r}")
            self._match = lambda name: any(fnmatch.fnmatchcase(name, g) for g in names)
        else:
            if not isinstance(regex, str):
                raise ValueError(f"regex must be a string, got {regex!r}")
            try:
                pattern = re.compile(regex)
            except re.error as exc:
                raise ValueError(f"regex {regex!r} does not compile: {exc}") from None
            self._match = lambda name: pattern.search(name) is not None

    def __call__(self, model: FLModel, ctx: FilterContext) -> FLModel:
        update = update_in(model, ctx, "exclude_vars")
        hit = sorted(n for n in update if self._match(n))
        for name in hit:
            a = update[name]
            if a.dtype == np.bool_:
                if ctx.reference is None or name not in ctx.reference:
                    raise ValueError(f"{name!r} is a bool array and the received model is unknown")
                update[name] = np.asarray(ctx.reference[name])
            else:
                update[name] = np.zeros_like(a)
        log.info(
            "exclude_vars on %s (round %s): %d variable(s) excluded", ctx.site, ctx.round, len(hit)
        )
        return _as_diff(model, update)


class Clip:
    """The update scaled to an L2 norm of at most ``max_norm`` (all
    floating-point arrays together)."""

    POINTS = UPDATE_POINTS

    def __init__(self, *, max_norm: float) -> None:
        self.max_norm = positive("max_norm", max_norm)

    def __call__(self, model: FLModel, ctx: FilterContext) -> FLModel:
        update = update_in(model, ctx, "clip")
        clipped, norm = clip_update(update, max_norm=self.max_norm)
        log.info(
            "clip on %s (round %s): update norm %.4g, %s to %.4g",
            ctx.site,
            ctx.round,
            norm,
            "clipped" if norm > self.max_norm else "within",
            self.max_norm,
        )
        return _as_diff(model, clipped)


class Gaussian:
    """N(0, ``sigma``²) added to every floating-point weight.

    ``seed`` fixes the noise (tests only: whoever knows it can subtract the
    noise); by default it is drawn from a generator seeded by the OS's
    CSPRNG. With ``clip_norm`` (the norm an earlier ``clip`` bounds the
    update to) and ``delta``, the filter is a local Gaussian mechanism of
    noise multiplier ``sigma / clip_norm`` and adds this site's ε after the
    results it noised so far to each result's metrics (``local_dp_epsilon``).
    """

    POINTS = UPDATE_POINTS

    def __init__(
        self,
        *,
        sigma: float,
        seed: int | None = None,
        clip_norm: float | None = None,
        delta: float | None = None,
    ) -> None:
        self.sigma = positive("sigma", sigma, zero=True)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        if (clip_norm is None) != (delta is None):
            raise ValueError("clip_norm and delta go together (the local mechanism's accounting)")
        self.clip_norm = None if clip_norm is None else positive("clip_norm", clip_norm)
        self.delta = None if delta is None else positive("delta", delta)
        if self.delta is not None and self.delta >= 1:
            raise ValueError(f"delta must be < 1, got {delta!r}")
        if self.clip_norm is not None and self.sigma == 0:
            raise ValueError("sigma 0 with clip_norm: no noise, no privacy to account")
        self._rng = noise_rng(seed)
        self._released = 0

    def __call__(self, model: FLModel, ctx: FilterContext) -> FLModel:
        noised = add_gaussian(model.params, std=self.sigma, rng=self._rng)
        out = dataclasses.replace(model, params=noised)
        if self.clip_norm is not None and self.delta is not None:
            self._released += 1
            eps = gaussian_epsilon(
                noise_multiplier=self.sigma / self.clip_norm,
                sampling_fraction=1.0,
                rounds=self._released,
                delta=self.delta,
            )
            log.info(
                "gaussian on %s (round %s): sigma %.4g, local epsilon %.4g at delta %.3g "
                "after %d result(s)",
                ctx.site,
                ctx.round,
                self.sigma,
                eps,
                self.delta,
                self._released,
            )
            out.metrics = {**model.metrics, "local_dp_epsilon": eps}
        return out


class PercentilePrivacy:
    """NVIDIA FLARE's ``PercentilePrivacy`` (Shokri & Shmatikov, CCS 2015):
    of the update divided by the round's steps (meta ``num_steps``, 1 if
    absent), entries whose magnitude is under the ``percentile``-th
    percentile of all magnitudes become 0, the rest are truncated to
    ``[-gamma, gamma]``, and the update is multiplied back by the steps.
    Scalars (0-d arrays) pass unchanged, as FLARE's do."""

    POINTS = ("result_out",)

    def __init__(self, *, percentile: float = 10, gamma: float = 0.01) -> None:
        p = positive("percentile", percentile, zero=True)
        if p > 100:
            raise ValueError(f"percentile must be in [0, 100], got {percentile!r}")
        self.percentile = p
        self.gamma = positive("gamma", gamma)

    def __call__(self, model: FLModel, ctx: FilterContext) -> FLModel:
        update = update_in(model, ctx, "percentile_privacy")
        steps = model.meta.get(NUM_STEPS_KEY, 1)
        if isinstance(steps, bool) or not isinstance(steps, (int, float)) or not steps > 0:
            raise ValueError(f"meta {NUM_STEPS_KEY!r} must be a number > 0, got {steps!r}")
        names = [n for n, a in update.items() if is_floating(a.dtype) and a.size]
        if not names:
            return _as_diff(model, update)
        scaled = {n: update[n].astype(np.float64) / steps for n in names}
        magnitudes = np.concatenate([np.abs(scaled[n]).ravel() for n in names])
        cutoff = float(np.percentile(magnitudes, self.percentile))
        del magnitudes
        for name in names:
            d = scaled[name]
            if d.ndim == 0:
                continue
            d[(d > -cutoff) & (d < cutoff)] = 0.0
            np.clip(d, -self.gamma, self.gamma, out=d)
            update[name] = (d * steps).astype(update[name].dtype)
        log.info(
            "percentile_privacy on %s (round %s): cutoff %.4g at percentile %g, gamma %g",
            ctx.site,
            ctx.round,
            cutoff,
            self.percentile,
            self.gamma,
        )
        return _as_diff(model, update)
