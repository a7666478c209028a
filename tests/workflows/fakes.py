"""An in-memory Communicator whose sites are plain functions."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shoal.arrays import load_arrays, save_arrays
from shoal.workflows.api import TaskResult

#: (global params, round) -> (params, num_examples, metrics), or None for no answer.
SiteFn = Callable[
    [dict[str, np.ndarray], int], "tuple[Mapping[str, np.ndarray], int, dict[str, float]] | None"
]
#: (site, task's params, task's meta) -> (params, num_examples, metrics), or None:
#: a site's answer to a task other than "train" (``FakeComm.task_fns``).
TaskFn = Callable[
    [str, dict[str, np.ndarray], dict[str, Any]],
    "tuple[Mapping[str, np.ndarray], int, dict[str, float]] | None",
]


@dataclass
class FakeComm:
    site_fns: dict[str, SiteFn]
    results_dir: Path
    #: Raise this from gather() in this round (simulates a server crash).
    crash_in_round: int | None = None
    #: Task name -> how every site answers it (tasks not here: ``site_fns``).
    task_fns: dict[str, TaskFn] = field(default_factory=dict)
    scatters: list[dict[str, Any]] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False
    #: Seconds (virtual) each site takes per task in stream(); 1.0 if absent.
    durations: dict[str, float] = field(default_factory=dict)
    #: The virtual clock of stream(): when the last result arrived.
    now: float = 0.0
    #: Sites whose stream() results are ``params_type: diff``.
    diff_sites: set[str] = field(default_factory=set)
    _ids: Iterator[int] = field(default_factory=itertools.count)
    _tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: stream()'s board: site -> its open task id, and (due, seq, site, task).
    _open: dict[str, str] = field(default_factory=dict)
    _due: list[tuple[float, int, str, str]] = field(default_factory=list)

    def sites(self) -> Sequence[str]:
        return list(self.site_fns)

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
        n = next(self._ids)
        task_id = f"t{n}"
        call = {"task": task, "round": round, "weights_path": weights_path, "sites": list(sites)}
        call["meta"] = dict(meta or {})
        call["supersede"] = supersede
        self.scatters.append(call)
        self._tasks[task_id] = call
        if supersede == "targets":
            for site in sites:
                self._open[site] = task_id
                due = self.now + self.durations.get(site, 1.0)
                heapq.heappush(self._due, (due, n, site, task_id))
        else:
            self._open.clear()
        return task_id

    def stream(self, *, timeout: float) -> Iterator[TaskResult]:
        """Results in the order of a virtual clock: a site answers its task
        ``durations[site]`` after it was scattered, from the model file as
        it is when it answers (a file removed too early fails the test)."""
        while self._due:
            due, _, site, task_id = heapq.heappop(self._due)
            if self._open.get(site) != task_id:
                continue  # superseded
            del self._open[site]
            self.now = due
            call = self._tasks[task_id]
            rnd = call["round"]
            global_params = load_arrays(call["weights_path"], mmap=False)
            answer = self.site_fns[site](dict(global_params), rnd)
            if answer is None:
                continue
            params, n, metrics = answer
            path = save_arrays(self.results_dir / f"{task_id}-{site}.safetensors", params)
            yield TaskResult(
                site=site,
                task_id=task_id,
                round=rnd,
                num_examples=n,
                metrics=metrics,
                path=path,
                params_type="diff" if site in self.diff_sites else "full",
            )
            path.unlink(missing_ok=True)  # as the runtime does once the consumer moves on

    def gather(self, task_id: str, *, timeout: float) -> Iterator[TaskResult]:
        call = self._tasks[task_id]
        rnd = call["round"]
        if self.crash_in_round == rnd:
            raise RuntimeError("simulated crash")
        global_params = load_arrays(call["weights_path"], mmap=False)
        task_fn = self.task_fns.get(call["task"])
        for site in call["sites"]:
            if task_fn is not None:
                answer = task_fn(site, dict(global_params), call["meta"])
            else:
                answer = self.site_fns[site](dict(global_params), rnd)
            if answer is None:
                continue
            params, n, metrics = answer
            path = save_arrays(self.results_dir / f"{task_id}-{site}.safetensors", params)
            yield TaskResult(
                site=site, task_id=task_id, round=rnd, num_examples=n, metrics=metrics, path=path
            )

    def finish(self) -> None:
        self.finished = True

    def report(self, **progress: Any) -> None:
        self.reports.append(progress)


def shift(delta: float, n: int, **metrics: float) -> SiteFn:
    """A site that adds ``delta`` to every float array and reports ``n`` examples."""

    def fn(
        g: dict[str, np.ndarray], rnd: int
    ) -> tuple[dict[str, np.ndarray], int, dict[str, float]]:
        return {k: (v + delta).astype(v.dtype) for k, v in g.items()}, n, dict(metrics)

    return fn
