"""What a server-side workflow sees of the federation.

A workflow (FedAvg and friends) is pure logic: it decides what each round asks
of which sites and how results are combined. It talks to the federation only
through :class:`Communicator`, which the server runtime implements over gRPC
and the simulator implements in memory. Weights move as files in the
safetensors layout (see ``shoal.arrays``) so that a 1 GiB model is never copied
whole through a pipe: the workflow writes the global model to a file, the
runtime streams that file to the sites, and each site's result arrives as a
file the workflow memory-maps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from shoal.taskmeta import split_extras

__all__ = [
    "Communicator",
    "InMemoryResult",
    "TaskResult",
    "WorkflowContext",
    "WorkflowFn",
]


@dataclass(frozen=True)
class TaskResult:
    """One site's answer to one task."""

    site: str
    task_id: str
    round: int
    num_examples: int
    metrics: Mapping[str, float]
    #: The site's weights (and extras), a file in the safetensors layout
    #: (already hash-checked); ``Path()`` when a small result was handed over
    #: in memory. Read them with :meth:`arrays` and :meth:`extras`.
    path: Path
    #: The site's ``FLModel.meta``: JSON scalars (``shoal.taskmeta``).
    meta: Mapping[str, Any] = field(default_factory=dict)
    #: ``"full"`` (weights) or ``"diff"`` (weights minus the task's global model).
    params_type: str = "full"

    def _payload(self) -> dict[str, np.ndarray]:
        """Every array of the result, memory-mapped (no copy of the file is made)."""
        from shoal.arrays import load_arrays

        return load_arrays(self.path, mmap=True)

    def arrays(self) -> dict[str, np.ndarray]:
        """The weights (views, no copy)."""
        return split_extras(self._payload())[0]

    def extras(self) -> dict[str, np.ndarray]:
        """The site's extra named arrays (``FLModel.extras``), views."""
        return split_extras(self._payload())[1]

    def payload_bytes(self) -> int:
        """The size of the result's payload as it arrived (0 if unknown):
        what the round's ``bytes_received`` adds up."""
        try:
            return self.path.stat().st_size if self.path.name else 0
        except OSError:
            return 0


@dataclass(frozen=True)
class InMemoryResult(TaskResult):
    """A result whose arrays are in memory, not in a file (``path`` is ``Path()``):
    handed over by a simulated site's thread, or rewritten by a filter."""

    params: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def _payload(self) -> dict[str, np.ndarray]:
        return dict(self.params)

    def payload_bytes(self) -> int:
        return sum(int(np.asarray(a).nbytes) for a in self.params.values())


class Communicator(Protocol):
    """The workflow's narrow window onto the federation."""

    def sites(self) -> Sequence[str]:
        """The sites taking part in this job (fixed when the job starts)."""

    def scatter(
        self,
        *,
        task: str,
        round: int,
        weights_path: Path,
        sites: Sequence[str],
        meta: Mapping[str, Any] | None = None,
        weights_checksum: str | None = None,
        supersede: str = "all",
    ) -> str:
        """Offer ``weights_path`` as task ``task`` to ``sites``; returns the task id.

        Returns at once; sites pick the task up as soon as they ask for work.
        ``weights_checksum`` (``shoal.checksum``), when the caller knows it,
        spares reading the file once more to checksum it (sites still verify
        what they receive against it).

        The board holds one open task per site. ``supersede="all"`` (rounds)
        closes every open task: a result for one of them is refused from
        then on. ``supersede="targets"`` (asynchronous workflows) replaces
        only the targeted sites' tasks; the other sites' stay open and
        their results are still taken, by :meth:`stream`.
        """

    def gather(self, task_id: str, *, timeout: float) -> Iterator[TaskResult]:
        """Yield results of ``task_id`` as they arrive.

        Ends when every targeted site has answered, or has left the
        federation, or ``timeout`` seconds passed. Results are complete and
        verified files: a partial upload is never yielded. A result's file
        belongs to the runtime and is removed once the gather is over: fold
        in (or copy) what you need while iterating.
        """

    def stream(self, *, timeout: float) -> Iterator[TaskResult]:
        """Yield results of the open tasks scattered with
        ``supersede="targets"``, in the order they arrive, whatever the task.

        A site's task is closed by its result: give the site another with
        ``scatter(..., sites=[site], supersede="targets")`` while holding the
        result, and the stream goes on. Ends when no result came for
        ``timeout`` seconds, or when no open task is held by a site still in
        the federation (a site that left and came back counts again, as in
        :meth:`gather`). A result's file is removed once the consumer asks
        for the next result (or leaves the loop): fold in, or copy, what you
        need while holding it.
        """

    def finish(self) -> None:
        """Tell every site the job has no more tasks."""

    def report(self, **progress: Any) -> None:
        """Publish progress (round, per-site state) for ``show_stats``."""


@dataclass
class WorkflowContext:
    """Everything a workflow run gets."""

    job_id: str
    #: The job's parsed metadata (``shoal.jobs.spec.JobSpec``).
    spec: Any
    #: Workflow parameters from the job's metadata (e.g. ``num_rounds``).
    params: Mapping[str, Any]
    #: The job's unpacked app folder (put on sys.path for server hooks).
    app_dir: Path
    #: Where the workflow writes models, metrics and checkpoints.
    run_dir: Path
    comm: Communicator
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("shoal.workflow"))
    #: True once the runtime wants the workflow to stop at the next round
    #: boundary (its server is stopping): a round-based workflow then
    #: checkpoints the round in progress and raises ``WorkflowSuspended``.
    #: Asked between rounds, so it must return at once.
    stop_requested: Callable[[], bool] = field(default=lambda: False)

    def task_meta(self, **meta: Any) -> dict[str, Any]:
        """A task's meta: the job's ``client.config``, then the workflow's own
        ``meta`` (which wins on a shared key)."""
        client = getattr(self.spec, "client", None)
        config = getattr(client, "config", None) or {}
        return {**config, **meta}


class WorkflowFn(Protocol):
    def __call__(self, ctx: WorkflowContext) -> None: ...
