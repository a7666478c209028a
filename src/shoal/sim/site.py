"""Simulated sites: the job's client script run in threads of this process.

Each site gets a thread that executes the script (compiled once) in a fresh
``__main__`` namespace, with a :class:`SimBackend` installed through
``shoal.client.use_backend`` so ``fl.init()`` connects the script to the
simulator. Tasks reach a site through its inbox; results leave through
``emit`` as small JSON-able dicts, their weights written to a file first.
The same code runs in the simulator's own process (``--threads``) and in its
worker processes (``--processes``).

Limits of running sites as threads of one process (documented in
docs/client-api.md): ``sys.argv``, environment variables, the working
directory and imported modules are shared, so a script must get its identity
from ``fl.system_info()`` and must not keep per-site state in module globals.
"""

from __future__ import annotations

import builtins
import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import CodeType
from typing import Any

import numpy as np

from shoal.arrays import save_arrays
from shoal.client.api import FLModel, use_backend
from shoal.errors import ShoalError
from shoal.filters import FilterChain, build_chain, specs_from_json
from shoal.sim.logs import site_context
from shoal.taskmeta import join_extras, split_extras

__all__ = ["SimBackend", "SiteInfo", "SiteRuntime", "task_message"]

logger = logging.getLogger(__name__)

#: A message out of a site: ``{"type": "result" | "exit", "site": ..., ...}``.
Emit = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class SiteInfo:
    """One simulated site."""

    #: Its name, e.g. ``"site-7"``.
    name: str
    #: Its position among the job's sites (sorted by name order of creation).
    index: int


def task_message(
    *, site: str, task_id: str, task: str, round: int, weights_path: Path, meta: Mapping[str, Any]
) -> dict[str, Any]:
    """The JSON-able message that offers a task to a site."""
    return {
        "site": site,
        "task_id": task_id,
        "task": task,
        "round": round,
        "weights_path": str(weights_path),
        "meta": dict(meta),
    }


class _WeightsCache:
    """The current global model, read from its file once for all sites."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._path: str | None = None
        self._arrays: dict[str, np.ndarray] = {}

    def copy_of(self, path: str) -> dict[str, np.ndarray]:
        from shoal.arrays import load_arrays

        with self._lock:
            if path != self._path:
                self._arrays = load_arrays(path, mmap=False)
                self._path = path
            arrays = self._arrays
        return {k: v.copy() for k, v in arrays.items()}


class SimBackend:
    """The Client API backend of one simulated site (``shoal.client.ClientBackend``)."""

    def __init__(
        self,
        site: SiteInfo,
        *,
        job_id: str,
        num_sites: int,
        results_dir: Path,
        emit: Emit,
        slots: threading.Semaphore,
        weights: _WeightsCache | None = None,
        filters: dict[str, FilterChain] | None = None,
        state_dir: Path | None = None,
        tracking: Mapping[str, Any] | None = None,
    ) -> None:
        self.site_name = site.name
        self.state_dir = state_dir
        self.filters: dict[str, FilterChain] = filters or {}
        self.job_id = job_id
        self.site_index = site.index
        self.num_sites = num_sites
        self.inbox: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._results_dir = results_dir
        self._emit = emit
        self._slots = slots
        # Threads of the simulator's own process share the global model and
        # hand results over in memory; worker processes use files.
        self._weights = weights
        self._holding = False
        self._current: dict[str, Any] | None = None
        self.finished = False
        #: Site-side tracking (``tracking.site_metrics: site``), as a worker has it.
        self.tracking: dict[str, Any] = dict(tracking or {})
        self.job_name = job_id

    # A site holds one of the runtime's slots while it starts up and while it
    # trains (from a task's arrival to its send), and none while it waits:
    # this bounds the number of sites doing work at once, whatever N is.
    def acquire(self) -> None:
        if not self._holding:
            self._slots.acquire()
            self._holding = True

    def release(self) -> None:
        if self._holding:
            self._holding = False
            self._slots.release()

    def next_task(self) -> FLModel | None:
        from shoal.arrays import load_arrays

        self.release()
        message = self.inbox.get()
        if message is None:
            self.finished = True
            return None
        self.acquire()
        self._current = message
        # As a site daemon's worker sees it: the task's own names beside the
        # workflow's meta.
        meta = {
            **(message.get("meta") or {}),
            "task": message["task"],
            "round": message["round"],
            "site": self.site_name,
        }
        total = meta.get("total_rounds", meta.get("num_rounds"))
        # Writable copies: a script may update the arrays it receives in place.
        if self._weights is not None:
            params = self._weights.copy_of(message["weights_path"])
        else:
            params = load_arrays(message["weights_path"], mmap=False)
        params, extras = split_extras(params)
        return FLModel(
            params=params,
            extras=extras,
            current_round=int(message["round"]),
            total_rounds=int(total) if total is not None else None,
            meta=meta,
            task=str(message["task"]),
        )

    def send(self, model: FLModel) -> None:
        task = self._current
        if task is None:
            raise ShoalError(f"{self.site_name}: send() without a task")
        message: dict[str, Any] = {
            "type": "result",
            "site": self.site_name,
            "task_id": task["task_id"],
            "round": task["round"],
            "num_examples": int(model.num_examples),
            "metrics": {k: float(v) for k, v in model.metrics.items()},
            "meta": dict(model.meta),
            "params_type": model.params_type,
        }
        arrays = join_extras(model.params, model.extras)
        if self._weights is not None:
            # Same process: the arrays themselves (copied: the script may
            # reuse its buffers), no file written and read back per site.
            message["arrays"] = {k: np.array(v, copy=True) for k, v in arrays.items()}
        else:
            path = self._results_dir / task["task_id"] / f"{self.site_name}.safetensors"
            # No fsync: a simulation need not survive a power cut, and 1,000
            # sites' fsyncs would double a round's time.
            save_arrays(path, arrays, durable=False)
            message["path"] = str(path)
        self._current = None
        self._emit(message)
        self.release()

    def close(self) -> None:
        self.release()


class SiteRuntime:
    """Runs ``script`` once per site, each in its own thread.

    ``max_active`` bounds how many sites work at once; ``stack_size`` (bytes,
    0 for the system default) keeps thousands of idle threads cheap.
    """

    def __init__(
        self,
        *,
        script: Path,
        sites: Sequence[SiteInfo],
        num_sites: int,
        job_id: str,
        results_dir: Path,
        emit: Emit,
        max_active: int,
        stack_size: int = 0,
        in_memory: bool = False,
        filters: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
        app_dir: Path | None = None,
        state_root: Path | None = None,
        tracking: Mapping[str, Any] | None = None,
    ) -> None:
        self._script = script
        self._code: CodeType = compile(script.read_bytes(), str(script), "exec")
        self._emit = emit
        self._stack_size = stack_size
        slots = threading.Semaphore(max(1, max_active))
        weights = _WeightsCache() if in_memory else None
        self.backends = {
            s.name: SimBackend(
                s,
                job_id=job_id,
                num_sites=num_sites,
                results_dir=results_dir,
                emit=emit,
                slots=slots,
                weights=weights,
                # Each site its own filters: a filter may keep per-site state.
                filters={
                    point: build_chain(point, specs_from_json(specs), app_dir=app_dir)
                    for point, specs in (filters or {}).items()
                },
                state_dir=state_root / s.name if state_root is not None else None,
                tracking=tracking,
            )
            for s in sites
        }
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        previous = threading.stack_size(self._stack_size) if self._stack_size else None
        try:
            for name, backend in self.backends.items():
                thread = threading.Thread(
                    target=self._run_site, args=(backend,), name=f"sim-{name}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
        finally:
            if previous is not None:
                threading.stack_size(previous)

    def deliver(self, site: str, message: dict[str, Any] | None) -> None:
        """Queue a task (or ``None``: the job is over) for ``site``."""
        self.backends[site].inbox.put(message)

    def join(self, timeout: float | None = None) -> list[str]:
        """Wait for the site threads; returns the names of those still running."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return [t.name.removeprefix("sim-") for t in self._threads if t.is_alive()]

    def _run_site(self, backend: SimBackend) -> None:
        site_context(backend.site_name)
        use_backend(backend)
        error: str | None = None
        namespace: dict[str, Any] = {
            "__name__": "__main__",
            "__file__": str(self._script),
            "__builtins__": builtins,
            "__package__": None,
            "__spec__": None,
            "__loader__": None,
            "__cached__": None,
            "__doc__": None,
        }
        backend.acquire()
        try:
            exec(self._code, namespace)
        except SystemExit as exc:
            if exc.code not in (None, 0):
                error = f"the script exited with status {exc.code!r}"
                logger.error("%s: %s", backend.site_name, error)
        except BaseException as exc:
            error = "".join(traceback.format_exception(exc)).rstrip()
            # Goes to this site's log (the thread runs in its context).
            logger.error("%s: the script failed:\n%s", backend.site_name, error)
        finally:
            backend.release()
            namespace.clear()
        left_early = error is None and not backend.finished
        if left_early:
            logger.warning("%s: the script ended before the job did", backend.site_name)
        self._emit(
            {"type": "exit", "site": backend.site_name, "error": error, "left_early": left_early}
        )
