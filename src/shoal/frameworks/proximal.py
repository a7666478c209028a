"""What FedProx's client helpers share, framework-free: where ``mu`` and the
global weights come from.

``shoal.frameworks.torch.proximal_term`` and
``shoal.frameworks.keras.proximal_term`` / ``ProximalTerm`` take the task
(an ``FLModel``: its ``params`` are the global weights, its
``meta["fedprox_mu"]`` the ``mu`` job.yml set) or the global weights and
``mu`` apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shoal.client.model import FLModel
from shoal.errors import ConfigError

__all__ = ["MU_KEY", "ProximalSource", "proximal_source"]

#: The task meta key the ``fedprox`` workflow sends ``mu`` under.
MU_KEY = "fedprox_mu"


@dataclass(frozen=True)
class ProximalSource:
    """The global weights a round started from, and the proximal term's weight."""

    params: Mapping[str, Any]
    mu: float


def proximal_source(global_params: FLModel | Mapping[str, Any], mu: float | None) -> ProximalSource:
    """``global_params`` (a task, or its weights) and ``mu`` (given, or the
    task's ``fedprox_mu``) checked: ConfigError when neither says ``mu``,
    ValueError for a ``mu`` that is not a finite number >= 0."""
    if isinstance(global_params, FLModel):
        params: Mapping[str, Any] = global_params.params
        if mu is None:
            mu = global_params.meta.get(MU_KEY)
            if mu is None:
                raise ConfigError(
                    f"proximal_term: the task's meta has no {MU_KEY!r} (is the job's "
                    "workflow fedprox?); pass mu= to set it here"
                )
    elif isinstance(global_params, Mapping):
        params = global_params
        if mu is None:
            raise ConfigError("proximal_term: pass mu= with the global weights (or pass the task)")
    else:
        raise TypeError(
            "proximal_term: global_params must be the task (an FLModel) or its params, "
            f"got {type(global_params).__name__}"
        )
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not math.isfinite(mu) or mu < 0:
        raise ValueError(f"proximal_term: mu must be a finite number >= 0, got {mu!r}")
    return ProximalSource(params=params, mu=float(mu))
