"""A running job as the server daemon sees it.

The daemon never runs the workflow itself: it starts a workflow process
(``shoal.server.job_process``) and acts as its post office. The workflow says
"offer this weights file as task T to these sites"; the daemon hands it to
each site's job worker when the worker asks (its ``Work`` stream waits until
work exists), receives each result into a file, checks it, and tells the
workflow.

The task board is read from the Fleet server's event loop (``take_task``,
plus an ``on_change`` listener that wakes the waiting calls); messages to
the workflow go through a thread of the run, so no caller ever waits on a
busy workflow process.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal import checksum, jobstatus
from shoal.errors import BusyError, ConfigError, PeerRejectedError
from shoal.sandbox import Confinement, job_env
from shoal.server.ipc import EXIT_SUSPENDED, IPC_INLINE_MAX, IpcChannel
from shoal.server.store import JobRecord
from shoal.taskmeta import check_params_type, check_result_meta
from shoal.transport.frames import (
    INLINE_MAX,
    PayloadHeader,
    WireFrame,
    human_bytes,
    receive_bytes_async,
    receive_to_file_async,
)

__all__ = ["DONE", "STOPPED", "SUSPENDED", "JobRun", "Task"]

log = logging.getLogger(__name__)

#: Returned by ``take_task`` when the job has no more work for the site.
DONE = object()
#: How a run ends when the server stops (not job statuses: the job stays
#: RUNNING in the store and resumes when the server starts again).
#: SUSPENDED: the workflow checkpointed the round in progress and stopped.
SUSPENDED = "suspended"
#: STOPPED: the workflow was stopped mid-round (the grace period ran out, or
#: the server did not wait); the job resumes from its last checkpoint.
STOPPED = "stopped"
#: Ends the thread that writes to the workflow process.
_STOP_SENDING = object()


@dataclass
class Task:
    task_id: str
    name: str
    round: int
    weights_path: Path
    meta: dict[str, Any]
    sites: frozenset[str]
    #: Checksum of the weights file, when the workflow computed it while writing.
    checksum: str | None = None
    #: Size of the weights file (-1: unknown), and its bytes and their
    #: checksum when it is small enough to travel inline: read once, not once
    #: per site.
    size: int = -1
    small: bytes | None = field(default=None, repr=False)
    small_checksum: str = ""
    answered: set[str] = field(default_factory=set)
    delivered: set[str] = field(default_factory=set)
    #: Sites whose result is being received (a second upload at once is refused).
    receiving: set[str] = field(default_factory=set)
    created: float = field(default_factory=time.monotonic)


class JobRun:
    """Workflow process + task board for one job."""

    def __init__(
        self,
        record: JobRecord,
        *,
        sites: Sequence[str],
        on_end: Callable[[JobRun, str, str | None], None],
        on_progress: Callable[[JobRun], None] | None = None,
        python: str = sys.executable,
        secrets: Sequence[Path] = (),
    ) -> None:
        self.record = record
        self.job_id = record.job_id
        self.sites = tuple(sorted(sites))
        self.site_set = frozenset(self.sites)
        self._on_end = on_end
        self._on_progress = on_progress
        self._sites_done: set[str] = set()
        self._python = python
        #: What the workflow process (job code: server hooks) must never reach.
        self._secrets = tuple(secrets)
        self._cond = threading.Condition()
        self._listeners: list[Callable[[], None]] = []
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        #: The board: each site's open task (a result closes it for that
        #: site), and the open tasks by id.
        self._current: dict[str, Task] = {}
        self._tasks: dict[str, Task] = {}
        self._finished = False
        self._ended = False
        self._aborting: str | None = None
        #: Set by drain() and detach(): the server is stopping.
        self._draining = False
        self._detached = False
        #: The last round the workflow reported checkpointed in this run.
        self.checkpointed_round: int | None = None
        self._failed_sites: dict[str, str] = {}
        self.site_states: dict[str, dict[str, Any]] = {s: {"state": "starting"} for s in self.sites}
        self.progress: dict[str, Any] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.ipc: IpcChannel | None = None
        self.started = time.monotonic()

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        rec = self.record
        home, tmp = rec.folder / "home", rec.folder / "tmp"
        for d in (rec.run_dir, rec.logs_dir, home, tmp):
            d.mkdir(parents=True, exist_ok=True)
        parent_sock, child_sock = socket.socketpair()
        log_file = open(rec.logs_dir / "server.log", "ab")  # noqa: SIM115 - handed to the child
        # Server hooks are job code: the workflow process may read the job
        # and write its run folder, never the server's kit, database, other
        # jobs or the logs sites uploaded (shoal.sandbox).
        plan = Confinement.for_job(
            [rec.run_dir, home, tmp],
            deny=self._secrets,
            extra_read=[rec.job_dir],
            label="workflow",
        )
        argv = [
            self._python,
            "-m",
            "shoal.server.job_process",
            "--job-id",
            rec.job_id,
            "--job-dir",
            str(rec.folder),
            "--ipc-fd",
            str(child_sock.fileno()),
            "--sites",
            ",".join(self.sites),
        ]
        env = job_env(os.environ, home=home, tmp=tmp)
        env["PYTHONUNBUFFERED"] = "1"
        try:
            self.proc = subprocess.Popen(
                plan.command(argv, python=self._python),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                pass_fds=(child_sock.fileno(),),
                cwd=rec.folder,
                env=env,
                # Own process group: abort kills the workflow and anything it spawned.
                start_new_session=True,
            )
        finally:
            child_sock.close()
            log_file.close()
        self.ipc = IpcChannel(parent_sock)
        threading.Thread(
            target=self._write_ipc, name=f"job-{rec.job_id[:8]}-send", daemon=True
        ).start()
        log.info(
            "job %s (%s): workflow process %d started for sites %s",
            rec.job_id,
            rec.name,
            self.proc.pid,
            ", ".join(self.sites),
        )
        threading.Thread(
            target=self._read_ipc, name=f"job-{rec.job_id[:8]}-ipc", daemon=True
        ).start()
        threading.Thread(
            target=self._watch, name=f"job-{rec.job_id[:8]}-watch", daemon=True
        ).start()

    def abort(self, reason: str) -> None:
        """Kill the workflow process group; the watcher records ABORTED."""
        with self._cond:
            if self._ended or self._aborting:
                return
            self._aborting = reason
            self._board_changed()
        log.info("job %s: aborting (%s)", self.job_id, reason)
        self._kill()

    def _kill(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def drain(self) -> None:
        """The server is stopping: the workflow finishes and checkpoints the
        round in progress, then exits EXIT_SUSPENDED instead of offering the
        next one (its last round it completes). Sites go on answering meanwhile."""
        with self._cond:
            if self._ended or self._draining:
                return
            self._draining = True
        self._send({"op": "drain"})

    def wait_ended(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the workflow process to exit."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._ended:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def detach(self) -> None:
        """Stop the workflow process without ending the job (server shutdown)."""
        with self._cond:
            if self._ended:
                return
            self._detached = True
            self._finished = True
            self._board_changed()
        self._kill()

    def site_job_event(self, site: str, state: str, detail: str) -> None:
        """A site daemon reports its worker for this job started/finished/failed."""
        if site not in self.site_set:
            return
        if state in ("finished", "failed", "aborted", "refused"):
            with self._cond:
                self._sites_done.add(site)
                self._cond.notify_all()
            self.site_states[site] = {"state": f"worker {state}"}
            if state == "refused" and not self._finished:
                # "refused by site X's policy: ...": no code of the job ran there.
                self.site_failed(site, detail or f"refused by site {site}")
            elif state == "failed" and not self._finished:
                self.site_failed(site, f"training script failed: {detail}".strip())
        elif state == "started":
            self.site_states[site] = {"state": "worker started"}

    def wait_sites_done(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not set(self.sites) <= (self._sites_done | set(self._failed_sites)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._cond.wait(remaining)

    def _watch(self) -> None:
        assert self.proc is not None
        code = self.proc.wait()
        # The workflow's process group may hold children (a TF evaluator, ...).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with self._cond:
            self._ended = True
            self._finished = True
            self._board_changed()
            self._cond.notify_all()
        self._outbox.put(_STOP_SENDING)
        if self._aborting:
            status, error = jobstatus.ABORTED, self._aborting
        elif code == EXIT_SUSPENDED and self._draining:
            status, error = SUSPENDED, None
        elif code != 0 and (self._draining or self._detached):
            # Killed by the server's shutdown, or failed while the
            # federation stops around it (sites stopped at the same time):
            # not the job's failure; it resumes and is judged then.
            status = STOPPED
            error = None if self._detached else self._failure_reason(code)
        elif code == 0:
            status, error = jobstatus.COMPLETED, None
        else:
            status, error = jobstatus.EXECUTION_EXCEPTION, self._failure_reason(code)
        if self.ipc:
            self.ipc.close()
        log.info("job %s: workflow process exited with %s -> %s", self.job_id, code, status)
        self._on_end(self, status, error)

    def _failure_reason(self, code: int) -> str:
        path = self.record.run_dir / "error.txt"
        reason = path.read_text(errors="replace").strip() if path.exists() else ""
        if not reason:
            reason = f"workflow process exited with code {code}"
        if self._failed_sites:
            sites = "; ".join(f"{s}: {d}" for s, d in sorted(self._failed_sites.items()))
            reason = f"{reason} [site failures: {sites}]"
        return reason

    @property
    def ended(self) -> bool:
        return self._ended

    # -- from the workflow process -----------------------------------------

    def _read_ipc(self) -> None:
        assert self.ipc is not None
        while True:
            try:
                msg = self.ipc.recv()
            except (EOFError, OSError, ValueError):
                return
            if msg is None:
                continue
            try:
                self._handle(msg)
            except Exception:
                log.exception("job %s: bad message from workflow process: %r", self.job_id, msg)

    def _handle(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "scatter":
            sites = frozenset(str(s) for s in msg["sites"]) & self.site_set
            weights = Path(msg["weights_path"])
            size, small, small_checksum = -1, None, ""
            with contextlib.suppress(OSError):  # a missing file fails each send instead
                size = weights.stat().st_size
                if size <= INLINE_MAX:
                    small = weights.read_bytes()
                    small_checksum = checksum.of_bytes(small)
            task = Task(
                task_id=str(msg["task_id"]),
                name=str(msg["task"]),
                round=int(msg["round"]),
                weights_path=weights,
                meta=dict(msg.get("meta") or {}),
                sites=sites,
                checksum=str(msg["checksum"]) if msg.get("checksum") else None,
                size=size,
                small=small,
                small_checksum=small_checksum,
            )
            supersede = str(msg.get("supersede") or "all")
            with self._cond:
                if supersede == "targets":
                    # Only the targeted sites move on; the others' tasks stay open.
                    self._current.update(dict.fromkeys(sites, task))
                else:
                    # A new round supersedes the old one for everyone.
                    self._current = dict.fromkeys(sites, task)
                self._tasks = {t.task_id: t for t in self._current.values()}
                self._board_changed()
                # Sites that are not here now cannot answer: say so at once.
                # Under the lock, as site_back: a site coming back meanwhile
                # must never be told "gone" after its "back".
                for s in sorted(sites):
                    if s in self._failed_sites:
                        self._tell_gone(s, self._failed_sites[s])
            for s in sites:
                self.site_states[s] = {"state": "task offered", "round": task.round}
            log.info(
                "job %s: round %d task %s offered to %s",
                self.job_id,
                task.round,
                task.name,
                ", ".join(sorted(sites)),
            )
        elif op == "finish":
            with self._cond:
                self._finished = True
                self._board_changed()
        elif op == "report":
            self.progress = {k: v for k, v in msg.items() if k != "op"}
            checkpointed = msg.get("status") in ("round_done", "suspended")
            if checkpointed and isinstance(msg.get("round"), int):
                self.checkpointed_round = msg["round"]
            if self._on_progress is not None:
                self._on_progress(self)
        else:
            log.warning("job %s: unknown workflow message %r", self.job_id, op)

    # -- from sites -----------------------------------------------------------

    def on_change(self, listener: Callable[[], None]) -> None:
        """``listener()`` is called whenever the task board changes (a new task,
        the job finishing or aborting), from the thread that changed it and
        under the board's lock: it must return at once (e.g. ``Wakeup.fire``)."""
        with self._cond:
            self._listeners.append(listener)

    def _board_changed(self) -> None:
        # Called with self._cond held.
        for listener in self._listeners:
            listener()

    def take_task(self, site: str) -> Task | object | None:
        """The site's open task, DONE, or None when there is none yet (no wait)."""
        with self._cond:
            if self._finished or self._aborting:
                return DONE
            t = self._current.get(site)
            if t is not None and site not in t.answered:
                t.delivered.add(site)
                return t
            return None

    async def accept_result(
        self,
        site: str,
        header: PayloadHeader,
        frames: AsyncIterator[WireFrame],
        max_size: int,
        *,
        go: Callable[[], Awaitable[object]] | None = None,
        transfer: Callable[[], AbstractAsyncContextManager[object]] | None = None,
    ) -> dict[str, Any]:
        """Receive a site's result (the rest of a ``grpc.aio`` request stream)
        into the run folder and hand it to the workflow. ``go`` is awaited
        once the result is known to be wanted, before its data is read (the
        Work stream tells the site to start sending then). ``transfer()`` is
        entered around ``go`` and the receipt (the Fleet service's transfer
        slot and stall watch): only after the checks, so a result nobody
        wants, or a second upload of one already arriving (``BusyError``:
        the sender tries again later), is refused at once and never waits
        for, or holds, a slot."""
        claimed = header.meta.get("site")
        if claimed is not None and claimed != site:
            raise PeerRejectedError(f"{site} sent a result claiming to be from {claimed!r}")
        num_examples = header.meta.get("num_examples", 0)
        # Strictly an int: int() would round 1.5 down and raise OverflowError
        # on infinity. The workflow bounds it from above (max_num_examples).
        if not isinstance(num_examples, int) or isinstance(num_examples, bool):
            raise PeerRejectedError(
                f"num_examples must be an integer, got {type(num_examples).__name__}"
            )
        metrics = header.meta.get("metrics") or {}
        if not isinstance(metrics, dict):
            raise PeerRejectedError("metrics must be a JSON object")
        try:
            result_meta = check_result_meta(header.meta.get("meta"))
            params_type = check_params_type(header.meta.get("params_type", "full"))
        except ConfigError as exc:
            raise PeerRejectedError(str(exc)) from None
        with self._cond:
            task = self._tasks.get(header.task_id)
            if task is None:
                raise PeerRejectedError(
                    f"result for unknown or superseded task {header.task_id!r} from {site}"
                )
            if site not in task.sites:
                raise PeerRejectedError(f"task {task.task_id} was not given to {site}")
            if self._current.get(site) is not task:
                raise PeerRejectedError(f"task {task.task_id} was superseded for {site}")
            if site in task.answered:
                raise PeerRejectedError(f"duplicate result for task {task.task_id} from {site}")
            if site in task.receiving:
                # Both would land in the same file: the loser would delete the
                # winner's. Not a refusal for good: the other upload may be an
                # old worker's on a dead link, which the stall watch ends; the
                # sender tries again (BusyError) and gets in then.
                raise BusyError(f"a result for task {task.task_id} from {site} is already arriving")
            task.receiving.add(site)
        try:
            dest: Path | None = None
            inline: bytes | None = None
            async with transfer() if transfer is not None else contextlib.nullcontext():
                if go is not None:
                    await go()
                t0 = time.monotonic()
                if header.inline is not None and header.size <= IPC_INLINE_MAX:
                    # A small model: handed to the workflow in the message, no file
                    # (creating a file per site and round dominated a round at scale).
                    inline = await receive_bytes_async(header, frames, max_size=max_size)
                    size = len(inline)
                else:
                    dest = self.record.run_dir / "results" / task.task_id / f"{site}.safetensors"
                    # Not fsynced: after a crash the round is re-run from the checkpoint.
                    received = await receive_to_file_async(
                        header, frames, dest, max_size=max_size, durable=False
                    )
                    size = received.size
                elapsed = time.monotonic() - t0
            with self._cond:
                # Re-check: the workflow may have moved on while we received.
                if site in task.answered or self._current.get(site) is not task:
                    if dest is not None:
                        dest.unlink(missing_ok=True)
                    raise PeerRejectedError(f"result for task {task.task_id} from {site} is stale")
                task.answered.add(site)
        finally:
            with self._cond:
                task.receiving.discard(site)
        self.site_states[site] = {
            "state": "result received",
            "round": task.round,
            "metrics": metrics,
        }
        log.log(
            logging.INFO if size > INLINE_MAX else logging.DEBUG,  # as fleet's task lines
            "job %s: received result from %s for round %d: %s in %.3f s",
            self.job_id,
            site,
            task.round,
            human_bytes(size),
            elapsed,
        )
        msg: dict[str, Any] = {
            "op": "result",
            "task_id": task.task_id,
            "site": site,
            "round": task.round,
            "num_examples": num_examples,
            "metrics": metrics,
        }
        if result_meta:
            msg["meta"] = result_meta
        if params_type != "full":
            msg["params_type"] = params_type
        if inline is not None:
            msg["data_b64"] = base64.b64encode(inline).decode("ascii")
        else:
            msg["path"] = str(dest)
        self._send(msg)
        return {"round": task.round, "bytes": size}

    def site_failed(self, site: str, reason: str, *, may_return: bool = False) -> None:
        """The site's worker died or the site left: the workflow stops waiting
        for it. ``may_return``: it lost its connection, and may well be back
        in a moment (the workflow keeps a round it leaves open a little)."""
        if site not in self.site_set or self._ended:
            return
        with self._cond:  # ordered with site_back and a scatter's notices
            self._failed_sites[site] = reason
            self.site_states[site] = {"state": f"gone: {reason}"}
            self._tell_gone(site, reason, may_return=may_return)

    def site_back(self, site: str) -> None:
        """The site reconnected: the workflow waits for its results again."""
        if site not in self.site_set or self._ended:
            return
        with self._cond:  # ordered with site_failed and a scatter's notices
            self._failed_sites.pop(site, None)
            self.site_states[site] = {"state": "reconnected"}
            self._send({"op": "site_back", "site": site})

    def _tell_gone(self, site: str, reason: str, *, may_return: bool = False) -> None:
        msg: dict[str, Any] = {"op": "site_gone", "site": site, "reason": reason}
        if may_return:
            msg["may_return"] = True
        self._send(msg)

    def _send(self, msg: dict[str, Any]) -> None:
        """Queue ``msg`` for the workflow process; never waits. A workflow busy
        aggregating lets the socket fill up: only the run's sender thread waits
        then, not the Fleet server's loop or the scheduler."""
        if self.ipc is None or self._ended:
            return
        self._outbox.put(msg)

    def _write_ipc(self) -> None:
        assert self.ipc is not None
        while (msg := self._outbox.get()) is not _STOP_SENDING:
            if self._ended:
                continue
            try:
                self.ipc.send(msg)
            except OSError as exc:
                if not self._ended:
                    log.warning("job %s: workflow process unreachable: %s", self.job_id, exc)

    def max_result_bytes(self) -> int:
        with self._cond:
            base = max((max(t.size, 0) for t in self._tasks.values()), default=0)
        # Results mirror the global model; allow header slack, refuse anything far larger.
        return 2 * base + 16 * 1024 * 1024
