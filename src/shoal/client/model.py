"""What a training script exchanges with shoal: :class:`FLModel`, and the
:class:`ClientBackend` that carries it (a job worker's gRPC stream, or the
simulator's in-process queues).

Its own module so that both sides can use it without importing each other:
``shoal.client.api`` (the functions a script calls) picks a backend, and
``shoal.client.worker`` (the gRPC backend) builds ``FLModel`` objects. Users
import both names from ``shoal.client``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

__all__ = ["ClientBackend", "FLModel"]


@dataclass
class FLModel:
    """Weights plus what travels with them, in either direction.

    ``params`` maps stable names to arrays. From the server, ``current_round``
    and ``total_rounds`` say where the job is. To the server, ``num_examples``
    weights this site's contribution in the average and ``metrics`` are
    stored with the job (and written to TensorBoard).
    """

    params: Mapping[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    num_examples: int = 0
    current_round: int | None = None
    total_rounds: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class ClientBackend(Protocol):
    """What the Client API needs from whatever runs the script."""

    site_name: str
    job_id: str
    #: This site's position among the job's sites (sorted by name) and their
    #: count: lets a script pick its own shard of a shared demo data set.
    site_index: int
    num_sites: int

    def next_task(self) -> FLModel | None:
        """Block until the next task arrives; ``None`` when the job is over."""

    def send(self, model: FLModel) -> None:
        """Return this round's result to the server."""

    def close(self) -> None:
        """Release connections; called once when the script ends."""
