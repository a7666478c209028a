"""Where a filter runs: :class:`FilterContext` (its own module, so that the
built-in filters can import it without importing the package that registers them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["FilterContext"]


@dataclass(frozen=True)
class FilterContext:
    """Where a filter runs."""

    #: One of :data:`POINTS`.
    point: str
    job_id: str
    #: The site the data comes from or goes to (``model_out``: every selected site).
    site: str
    #: The task's name, e.g. ``"train"``.
    task: str
    round: int | None = None
    #: The global model the data answers, where there is one: at
    #: ``result_out`` the task's params as this site received them (after its
    #: ``task_in`` filters), at ``result_in`` the model the round's sites
    #: trained from. What an update-based filter (clip, percentile privacy,
    #: quantization) subtracts from a ``full`` result. None elsewhere.
    reference: Mapping[str, np.ndarray] | None = None
