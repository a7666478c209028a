"""The workflow process: runs one job's server-side workflow.

Started by the server daemon, one per running job, so user code (model
builders, evaluators, custom workflows) never runs inside the daemon. It
talks to the daemon through ``shoal.server.ipc`` and exits 0 when the
workflow completes; on an exception it writes the reason to
``run/error.txt``, the traceback to its log, and exits 1. Asked to stop
(op "drain": the daemon is stopping), it lets the round in progress finish,
checkpoints it and exits ``EXIT_SUSPENDED``.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import logging
import math
import os
import socket
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal._memory import tune_allocator
from shoal._watchdog import exit_with_parent
from shoal.arrays import arrays_from_bytes
from shoal.errors import WorkflowSuspended
from shoal.jobs.spec import DEFAULT_REJOIN_GRACE_S
from shoal.server.ipc import EXIT_SUSPENDED, IpcChannel
from shoal.workflows.api import TaskResult, WorkflowContext

log = logging.getLogger("shoal.workflow")

#: Seconds a round stays open for a site that left during it, so that one
#: whose daemon restarts or whose session is cut and opened again comes back
#: in time to answer the round (its task stays open on the daemon's board).
#: A site that does not come back costs the round this much at most, once.
#: A job sets its own with ``rejoin_grace_s`` in job.yml.
REJOIN_GRACE_S = DEFAULT_REJOIN_GRACE_S


@dataclass(frozen=True)
class InlineResult(TaskResult):
    """A small result that came inside its IPC message (no file)."""

    data: bytes = field(default=b"", repr=False, compare=False)

    def _payload(self) -> dict[str, Any]:
        return arrays_from_bytes(self.data)

    def payload_bytes(self) -> int:
        return len(self.data)


class IpcCommunicator:
    """Communicator over the daemon's IPC channel (see shoal.workflows.api)."""

    def __init__(
        self,
        ipc: IpcChannel,
        sites: Sequence[str],
        *,
        rejoin_grace_s: float = REJOIN_GRACE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ipc = ipc
        #: How long a round stays open for a site that left during it (see _gather).
        self.rejoin_grace_s = rejoin_grace_s
        self._clock = clock
        self._sites = tuple(sites)
        self._targets: dict[str, frozenset[str]] = {}
        self._gone: set[str] = set()
        #: Site -> its open task of those scattered with supersede="targets"
        #: (what :meth:`stream` waits for).
        self._open: dict[str, str] = {}
        #: Messages read while looking for a "drain" between rounds, for the next gather.
        self._backlog: collections.deque[dict[str, Any]] = collections.deque()
        self._stop = False

    def stop_requested(self) -> bool:
        """True once the daemon asked the workflow to stop at the next round
        boundary (it is stopping). Never waits: reads what is already there."""
        while not self._stop:
            msg = self._ipc.recv(timeout=0)
            if msg is None:
                break
            if msg.get("op") == "drain":
                self._stop = True
            else:
                self._backlog.append(msg)
        return self._stop

    def _next(self, timeout: float) -> dict[str, Any] | None:
        if self._backlog:
            return self._backlog.popleft()
        msg = self._ipc.recv(timeout=timeout)
        if msg is not None and msg.get("op") == "drain":
            # The round in progress goes on: sites finish it, the driver
            # checkpoints it and then asks stop_requested().
            log.info("the server is stopping: this round is the last before the job resumes")
            self._stop = True
            return None
        return msg

    def sites(self) -> Sequence[str]:
        return self._sites

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
        if supersede not in ("all", "targets"):
            raise ValueError(f"supersede must be 'all' or 'targets', got {supersede!r}")
        task_id = str(uuid.uuid4())
        self._targets[task_id] = frozenset(sites)
        msg: dict[str, Any] = {
            "op": "scatter",
            "task_id": task_id,
            "task": task,
            "round": round,
            "weights_path": str(Path(weights_path).resolve()),
            "sites": sorted(sites),
            "meta": dict(meta or {}),
            "checksum": weights_checksum,
        }
        if supersede == "targets":
            msg["supersede"] = supersede
            self._open.update(dict.fromkeys(sites, task_id))
        else:
            self._open.clear()
        self._ipc.send(msg)
        return task_id

    def gather(self, task_id: str, *, timeout: float) -> Iterator[TaskResult]:
        files: list[Path] = []
        try:
            yield from self._gather(task_id, timeout, files)
        finally:
            # Folded in by now: a round's results never need to reach the
            # disk (deleted before writeback, they never do) or fill it up.
            _remove(files)

    def _gather(self, task_id: str, timeout: float, files: list[Path]) -> Iterator[TaskResult]:
        targets = self._targets[task_id]
        answered: set[str] = set()
        # Site -> when it left. A site gone before the round started is not
        # waited for; one whose connection is lost during it keeps the round
        # open for ``rejoin_grace_s``: a site daemon restarting, or a session
        # cut and opened again, says "site back" a moment later, takes the
        # round's task (still open on the daemon's board) and answers it.
        gone = dict.fromkeys((s for s in self._gone if s in targets), -math.inf)
        deadline = self._clock() + timeout
        while True:
            now = self._clock()
            waiting = targets - answered - gone.keys()
            rejoin_by = max(
                (left + self.rejoin_grace_s for left in gone.values()), default=-math.inf
            )
            if not waiting and now >= rejoin_by:
                # Over by what we know; a message already here may say otherwise
                # (a site back, a result): the round ends on those, not on stale state.
                msg = self._next(0)
                if msg is None:
                    return
            else:
                if now >= deadline:
                    log.warning(
                        "round timed out after %.0f s waiting for %s",
                        timeout,
                        ", ".join(sorted(waiting or gone.keys())),
                    )
                    return
                until = deadline if waiting else min(deadline, rejoin_by)
                msg = self._next(max(until - now, 0.0))
                if msg is None:
                    continue
            op = msg.get("op")
            if op == "site_gone":
                site = str(msg["site"])
                self._gone.add(site)
                if site in targets and site not in answered and site not in gone:
                    log.warning("site %s left during the round: %s", site, msg.get("reason"))
                    # A lost connection may be back in a moment; a failed
                    # training script is not (nothing would say "back").
                    gone[site] = self._clock() if msg.get("may_return") else -math.inf
            elif op == "site_back":
                # Without this a site once gone would be skipped by every later
                # round: each gather would end as soon as the others answered.
                site = str(msg["site"])
                self._gone.discard(site)
                if gone.pop(site, None) is not None and site not in answered:
                    log.info("site %s is back: waiting for its answer to this round", site)
            elif op == "result" and msg.get("task_id") != task_id:
                # A late answer to a round that is over: nothing will read it.
                if msg.get("path"):
                    files.append(Path(msg["path"]))
            elif op == "result":
                site = str(msg["site"])
                self._gone.discard(site)
                gone.pop(site, None)
                if site in answered:
                    # The daemon takes one result per site and task; never fold one twice.
                    if msg.get("path"):
                        files.append(Path(msg["path"]))
                    continue
                answered.add(site)
                yield _result(msg, files)

    def stream(self, *, timeout: float) -> Iterator[TaskResult]:
        files: list[Path] = []
        deadline = self._clock() + timeout
        #: Sites whose connection was lost during this stream -> when.
        left: dict[str, float] = {}
        try:
            while True:
                # The consumer is past the previous result: its file goes now.
                _remove(files)
                live = {s for s in self._open if s not in self._gone}
                now = self._clock()
                rejoin_by = max(
                    (t + self.rejoin_grace_s for s, t in left.items() if s in self._open),
                    default=-math.inf,
                )
                if not live and now < min(rejoin_by, deadline):
                    # Every site holding a task lost its connection a moment
                    # ago: one may be back at once (as in a round, see _gather).
                    msg = self._next(min(rejoin_by, deadline) - now)
                    if msg is None:
                        continue
                elif not live:
                    # Ended on what has arrived, not on stale state: a "site
                    # back" already here keeps the stream going.
                    msg = self._next(0)
                    if msg is None:
                        log.warning("no open task is held by a site still in the federation")
                        return
                else:
                    remaining = deadline - self._clock()
                    if remaining <= 0:
                        log.warning(
                            "no result for %.0f s (waiting for %s)",
                            timeout,
                            ", ".join(sorted(live)),
                        )
                        return
                    msg = self._next(remaining)
                    if msg is None:
                        continue
                op, site = msg.get("op"), str(msg.get("site"))
                if op == "site_gone":
                    if site not in self._gone and site in self._open:
                        log.warning("site %s left: %s", site, msg.get("reason"))
                        if msg.get("may_return"):
                            left[site] = self._clock()
                    self._gone.add(site)
                elif op == "site_back":
                    self._gone.discard(site)
                    left.pop(site, None)
                elif op == "result":
                    if self._open.get(site) != msg.get("task_id"):
                        if msg.get("path"):
                            files.append(Path(msg["path"]))  # superseded: nobody reads it
                        continue
                    del self._open[site]
                    self._gone.discard(site)
                    yield _result(msg, files)
                    deadline = self._clock() + timeout
        finally:
            _remove(files)

    def finish(self) -> None:
        self._ipc.send({"op": "finish"})

    def report(self, **progress: Any) -> None:
        self._ipc.send({"op": "report", **progress})


def _result(msg: Mapping[str, Any], files: list[Path]) -> TaskResult:
    """A result message as a TaskResult; its file, if any, joins ``files``."""
    fields: dict[str, Any] = {
        "site": str(msg["site"]),
        "task_id": str(msg["task_id"]),
        "round": int(msg["round"]),
        "num_examples": int(msg["num_examples"]),
        "metrics": dict(msg.get("metrics") or {}),
        "meta": dict(msg.get("meta") or {}),
        "params_type": str(msg.get("params_type") or "full"),
    }
    if "data_b64" in msg:
        return InlineResult(**fields, path=Path(), data=base64.b64decode(msg["data_b64"]))
    files.append(Path(msg["path"]))
    return TaskResult(**fields, path=files[-1])


def _remove(files: list[Path]) -> None:
    """Remove ``files`` (and their folders once empty); empties the list."""
    for path in files:
        path.unlink(missing_ok=True)
    for folder in {path.parent for path in files}:
        with contextlib.suppress(OSError):
            folder.rmdir()
    files.clear()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shoal-job-process")
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--job-dir", required=True, type=Path)
    parser.add_argument("--ipc-fd", required=True, type=int)
    parser.add_argument("--sites", required=True)
    args = parser.parse_args(argv)
    # If the server daemon dies, this workflow must not run on beside the
    # restarted server's own copy of the job.
    exit_with_parent()
    tune_allocator()
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s - %(name)s - %(levelname)s - %(message)s",
        stream=sys.stderr,
    )
    job_dir: Path = args.job_dir
    run_dir = job_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "error.txt").unlink(missing_ok=True)
    ipc = IpcChannel(socket.socket(fileno=args.ipc_fd))
    try:
        from shoal.jobs import APP_DIR, find_job_root, load_job_spec
        from shoal.workflows.registry import get_workflow

        root = find_job_root(job_dir / "job")
        spec = load_job_spec(root)
        app_dir = root / APP_DIR
        sites = [s for s in args.sites.split(",") if s]
        os.chdir(run_dir)
        comm = IpcCommunicator(ipc, sites, rejoin_grace_s=spec.rejoin_grace_s)
        ctx = WorkflowContext(
            job_id=args.job_id,
            spec=spec,
            params=spec.workflow.params,
            app_dir=app_dir,
            run_dir=run_dir,
            comm=comm,
            logger=log,
            stop_requested=comm.stop_requested,
        )
        log.info("job %s: running workflow %s on %s", args.job_id, spec.workflow.name, sites)
        if spec.rejoin_grace_s != REJOIN_GRACE_S:
            log.info("a site that leaves a round is waited for %g s", spec.rejoin_grace_s)
        get_workflow(spec.workflow.name)(ctx)
        log.info("job %s: workflow completed", args.job_id)
        return 0
    except WorkflowSuspended as exc:
        log.info("job %s: %s; it resumes from round %d", args.job_id, exc, exc.round + 1)
        with contextlib.suppress(OSError):  # the daemon's log says where the job stands
            ipc.send({"op": "report", "status": "suspended", "round": exc.round})
        return EXIT_SUSPENDED
    except BaseException as exc:  # noqa: BLE001 - everything is recorded, then reported by exit code
        traceback.print_exc()
        reason = f"{type(exc).__name__}: {exc}".strip()
        (run_dir / "error.txt").write_text(reason + "\n")
        return 1
    finally:
        ipc.close()


if __name__ == "__main__":
    sys.exit(main())
