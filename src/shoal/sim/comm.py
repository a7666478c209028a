"""The simulator's :class:`shoal.workflows.Communicator`: a federation in memory.

Tasks go to sites as small messages through a ``route`` callable (straight
into a thread's inbox, or down a pipe to a worker process); results come back
through :meth:`SimCommunicator.on_message`. Weights travel as files, as in a
real run: ``scatter`` links the workflow's file into the task's folder, each
site writes its result beside it, and ``gather`` yields
:class:`~shoal.workflows.TaskResult` objects that point at those files.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from shoal.errors import ConfigError
from shoal.sim.site import task_message
from shoal.workflows.api import InMemoryResult, TaskResult

__all__ = ["RoundStats", "SimCommunicator"]

logger = logging.getLogger(__name__)

#: Sends a task message (or ``None``: no more tasks) to one site.
Route = Callable[[str, "dict[str, Any] | None"], None]


@dataclass(frozen=True)
class RoundStats:
    """What one finished ``gather`` saw; passed to the progress callback."""

    #: The workflow's task name, e.g. ``"train"``.
    task: str
    #: The round the task belonged to.
    round: int
    #: Sites asked.
    asked: int
    #: Sites that answered in time.
    answered: int
    #: Seconds from ``scatter`` to the end of ``gather``.
    seconds: float
    #: Example-weighted mean of each metric the sites reported.
    metrics: Mapping[str, float] = field(default_factory=dict)
    #: Rounds the workflow will run, when it said so.
    total_rounds: int | None = None
    #: The global model's metrics the workflow reported for this round (its
    #: server-side evaluation), if any.
    global_metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass
class _Task:
    task_id: str
    task: str
    round: int
    folder: Path
    asked: int
    pending: set[str]
    started: float
    inbox: queue.SimpleQueue[TaskResult | str] = field(default_factory=queue.SimpleQueue)
    closed: bool = False
    #: Scattered with supersede="targets": its results go to ``stream()``.
    streamed: bool = False


class SimCommunicator:
    """An in-memory Communicator over simulated sites."""

    def __init__(
        self,
        sites: Sequence[str],
        *,
        route: Route,
        tasks_dir: Path,
        on_round: Callable[[RoundStats], None] | None = None,
        on_report: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> None:
        self._sites = list(sites)
        self._route = route
        self._tasks_dir = tasks_dir
        self._on_round = on_round
        self._on_report = on_report
        self._lock = threading.Lock()
        self._tasks: dict[str, _Task] = {}
        self._alive = set(self._sites)
        self._counter = itertools.count(1)
        self._finished = False
        #: Site -> traceback (or message) of each site whose script failed.
        self.errors: dict[str, str] = {}
        #: Sites whose script ended before the job did, without an error.
        self.left_early: list[str] = []
        #: The last ``report(...)`` the workflow made.
        self.last_report: dict[str, Any] = {}
        # A finished gather waits here for the workflow's report of the round
        # (which carries the server's evaluation) before it is announced.
        self._unannounced: RoundStats | None = None
        #: Results (and exits) of the tasks scattered with supersede="targets".
        self._arrivals: queue.SimpleQueue[TaskResult | str] = queue.SimpleQueue()
        #: Whether the workflow streams: its rounds are announced by its reports.
        self._streaming = False

    # -- Communicator -------------------------------------------------------

    def sites(self) -> Sequence[str]:
        return list(self._sites)

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
        unknown = [s for s in sites if s not in self._sites]
        if unknown:
            raise ConfigError(f"scatter: unknown site(s) {', '.join(unknown[:5])}")
        if supersede not in ("all", "targets"):
            raise ConfigError(f"scatter: supersede must be 'all' or 'targets', got {supersede!r}")
        streamed = supersede == "targets"
        # The previous round is announced by its own "round_done" report,
        # which FedAvg sends once this task is out (see _round_done).
        self._drop_closed_tasks()
        task_id = f"{task}-{round}-{next(self._counter)}"
        folder = self._tasks_dir / task_id
        folder.mkdir(parents=True)
        # A link (or copy) of its own: the workflow may replace its file before
        # a slow site has read it.
        weights = folder / "global.safetensors"
        try:
            os.link(weights_path, weights)
        except OSError:
            shutil.copyfile(weights_path, weights)
        with self._lock:
            live = [s for s in sites if s in self._alive]
            state = _Task(
                task_id=task_id,
                task=task,
                round=round,
                folder=folder,
                asked=len(sites),
                pending=set(live),
                started=time.monotonic(),
                streamed=streamed,
            )
            if streamed:
                state.inbox = self._arrivals
                self._streaming = True
                # The targets' earlier tasks are superseded for them: a late
                # result for one is dropped (the server refuses it).
                for other in self._tasks.values():
                    if other.streamed:
                        other.pending.difference_update(sites)
            self._tasks[task_id] = state
        logger.info("round %s: %s offered to %d site(s)", round, task, len(live))
        for site in live:
            self._route(
                site,
                task_message(
                    site=site,
                    task_id=task_id,
                    task=task,
                    round=round,
                    weights_path=weights,
                    meta=meta or {},
                ),
            )
        return task_id

    def gather(self, task_id: str, *, timeout: float) -> Iterator[TaskResult]:
        with self._lock:
            state = self._tasks.get(task_id)
        if state is None:
            raise ConfigError(f"gather: unknown task id {task_id!r}")
        deadline = time.monotonic() + timeout
        results: list[TaskResult] = []
        try:
            while True:
                with self._lock:
                    if not state.pending:
                        break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    logger.warning(
                        "round %s: %d site(s) did not answer within %.0fs",
                        state.round,
                        len(state.pending),
                        timeout,
                    )
                    break
                try:
                    item = state.inbox.get(timeout=remaining)
                except queue.Empty:
                    continue
                with self._lock:
                    site = item.site if isinstance(item, TaskResult) else item
                    if site not in state.pending:
                        continue  # a duplicate, or an exit after its result
                    state.pending.discard(site)
                if isinstance(item, TaskResult):
                    results.append(item)
                    yield item
        finally:
            with self._lock:
                state.closed = True
            self._round_done(state, results)

    def stream(self, *, timeout: float) -> Iterator[TaskResult]:
        deadline = time.monotonic() + timeout
        held: TaskResult | None = None
        try:
            while True:
                self._let_go(held)
                held = None
                with self._lock:
                    live = any(t.pending for t in self._tasks.values() if t.streamed)
                if not live:
                    logger.warning("no open task is held by a site still running")
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    logger.warning("no result for %.0fs", timeout)
                    return
                try:
                    item = self._arrivals.get(timeout=remaining)
                except queue.Empty:
                    continue
                with self._lock:
                    if isinstance(item, str):  # the site's script ended
                        for t in self._tasks.values():
                            if t.streamed:
                                t.pending.discard(item)
                        continue
                    state = self._tasks.get(item.task_id)
                    wanted = state is not None and item.site in state.pending
                    if state is not None:
                        state.pending.discard(item.site)
                if not wanted:
                    self._let_go(item)
                    continue
                held = item
                yield item
                deadline = time.monotonic() + timeout
        finally:
            self._let_go(held)

    def _let_go(self, result: TaskResult | None) -> None:
        """The stream's consumer is done with ``result``: its file goes, and
        so do the folders of streamed tasks nobody answers any more."""
        if result is not None and result.path.name:
            with contextlib.suppress(OSError):
                result.path.unlink()
        with self._lock:
            for t in self._tasks.values():
                if t.streamed and not t.pending:
                    t.closed = True

    def finish(self) -> None:
        self._announce()
        with self._lock:
            if self._finished:
                return
            self._finished = True
            alive = sorted(self._alive)
        for site in alive:
            self._route(site, None)

    def report(self, **progress: Any) -> None:
        self.last_report = dict(progress)
        if self._on_report is not None:
            self._on_report(progress)
        if self._streaming and progress.get("status") == "round_done":
            # No gather ends a streamed "round": its report is all there is.
            self._announce_report(progress)
            return
        pending = self._unannounced
        if pending is not None and progress.get("round") == pending.round:
            total = progress.get("total_rounds")
            metrics = progress.get("metrics")
            if isinstance(total, int):
                pending = replace(pending, total_rounds=total)
            if isinstance(metrics, Mapping) and progress.get("status") == "round_done":
                self._unannounced = replace(pending, global_metrics=_numbers(metrics))
                self._announce()
            else:
                self._unannounced = pending

    def _announce_report(self, progress: Mapping[str, Any]) -> None:
        sites = progress.get("sites")
        sites = sites if isinstance(sites, Mapping) else {}
        rnd, total = progress.get("round"), progress.get("total_rounds")
        metrics = progress.get("metrics")
        self._unannounced = RoundStats(
            task="train",
            round=int(rnd) if isinstance(rnd, int) else 0,
            asked=len(sites),
            answered=sum(1 for v in sites.values() if v == "ok"),
            seconds=float(progress.get("duration_s") or 0.0),
            total_rounds=total if isinstance(total, int) else None,
            global_metrics=_numbers(metrics) if isinstance(metrics, Mapping) else {},
        )
        self._announce()

    def _announce(self) -> None:
        stats, self._unannounced = self._unannounced, None
        if stats is None:
            return
        logger.info(
            "round %s: %d/%d site(s) answered in %.2fs%s",
            stats.round,
            stats.answered,
            stats.asked,
            stats.seconds,
            "".join(f", {k}={v:.4g}" for k, v in stats.global_metrics.items()),
        )
        if self._on_round is not None:
            self._on_round(stats)

    # -- from the sites -----------------------------------------------------

    def on_message(self, message: Mapping[str, Any]) -> None:
        """A site's ``result`` or ``exit`` message (thread-safe)."""
        kind = message.get("type")
        site = str(message.get("site"))
        if kind == "result":
            self._on_result(site, message)
        elif kind == "exit":
            self.on_exit(
                site, message.get("error"), left_early=bool(message.get("left_early", False))
            )
        else:
            logger.warning("ignoring an unknown message from %s: %r", site, kind)

    def _on_result(self, site: str, message: Mapping[str, Any]) -> None:
        task_id = str(message["task_id"])
        with self._lock:
            state = self._tasks.get(task_id)
            # The site stays pending until gather() takes its result.
            late = state is None or state.closed or site not in state.pending
        if late or state is None:
            logger.info("%s: late result for %s dropped", site, task_id)
            if "path" in message:
                with contextlib.suppress(OSError):
                    Path(str(message["path"])).unlink()
            return
        fields: dict[str, Any] = {
            "site": site,
            "task_id": task_id,
            "round": int(message["round"]),
            "num_examples": int(message["num_examples"]),
            "metrics": dict(message.get("metrics") or {}),
            "meta": dict(message.get("meta") or {}),
            "params_type": str(message.get("params_type") or "full"),
        }
        if "arrays" in message:
            state.inbox.put(InMemoryResult(**fields, path=Path(), params=message["arrays"]))
        else:
            state.inbox.put(TaskResult(**fields, path=Path(str(message["path"]))))

    def on_exit(self, site: str, error: str | None, *, left_early: bool = False) -> None:
        """``site``'s script ended (``error``: why it failed, if it did)."""
        with self._lock:
            self._alive.discard(site)
            if error is not None:
                self.errors[site] = error
            elif left_early:
                self.left_early.append(site)
            waiting = [t for t in self._tasks.values() if not t.closed and site in t.pending]
        for t in waiting:
            t.inbox.put(site)  # wakes gather() up to notice the site is gone

    # -- bookkeeping --------------------------------------------------------

    @property
    def alive(self) -> set[str]:
        """Sites whose script is still running."""
        with self._lock:
            return set(self._alive)

    def _drop_closed_tasks(self) -> None:
        # Results of finished rounds are aggregated by now; keep the disk small.
        with self._lock:
            closed = [t for t in self._tasks.values() if t.closed]
            for t in closed:
                del self._tasks[t.task_id]
        for t in closed:
            shutil.rmtree(t.folder, ignore_errors=True)

    def _round_done(self, state: _Task, results: list[TaskResult]) -> None:
        self._announce()  # the previous round, if its report never came
        weights = sum(max(r.num_examples, 0) for r in results)
        totals: dict[str, float] = {}
        for r in results:
            w = r.num_examples if weights else 1
            for name, value in r.metrics.items():
                totals[name] = totals.get(name, 0.0) + w * float(value)
        denominator = weights or len(results) or 1
        stats = RoundStats(
            task=state.task,
            round=state.round,
            asked=state.asked,
            answered=len(results),
            seconds=time.monotonic() - state.started,
            metrics={k: v / denominator for k, v in totals.items()},
        )
        self._announce()
        self._unannounced = stats


def _numbers(value: Mapping[str, Any]) -> dict[str, float]:
    return {
        str(k): float(v)
        for k, v in value.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
