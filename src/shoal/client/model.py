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
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = ["ClientBackend", "FLModel"]


@dataclass
class FLModel:
    """Weights plus what travels with them, in either direction.

    ``params`` maps stable names to arrays. From the server, ``task`` names
    the task (``"train"``, ``"validate"``, ``"submit_model"``: see
    ``shoal.taskmeta``), ``current_round`` and
    ``total_rounds`` say where the job is, and ``meta`` holds the task's meta:
    those, the job's ``client.config`` and what the workflow adds. To the
    server, ``num_examples`` weights this site's contribution in the average,
    ``metrics`` are stored with the job (and written to TensorBoard),
    ``meta`` (JSON scalars, at most 64 KiB) and ``extras`` (named arrays:
    control variates, masks) reach the workflow, and ``params_type`` says
    whether ``params`` are the weights (``"full"``) or the weights minus the
    global model this task brought (``"diff"``).
    """

    params: Mapping[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    num_examples: int = 0
    current_round: int | None = None
    total_rounds: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    task: str = "train"
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)
    params_type: str = "full"


class ClientBackend(Protocol):
    """What the Client API needs from whatever runs the script."""

    site_name: str
    job_id: str
    #: This site's position among the job's sites (sorted by name) and their
    #: count: lets a script pick its own shard of a shared demo data set.
    site_index: int
    num_sites: int
    #: A folder of this site's own for this job that outlives the script: a
    #: worker restarted for the same job finds what the last one left there
    #: (SCAFFOLD's site control variate). None: the backend keeps no such
    #: folder. ``shoal.client.state_dir()`` creates it on first use.
    state_dir: Path | None

    @property
    def filters(self) -> Mapping[str, Any]:
        """This site's filter chains (``shoal.filters``) by point: ``task_in``
        and ``result_out``. The Client API runs them; a backend builds them."""

    def next_task(self) -> FLModel | None:
        """Block until the next task arrives; ``None`` when the job is over."""

    def send(self, model: FLModel) -> None:
        """Return this round's result to the server."""

    def close(self) -> None:
        """Release connections; called once when the script ends."""
