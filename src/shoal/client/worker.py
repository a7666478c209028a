"""The job worker's side of the Client API: talks to the server over mTLS.

A site daemon starts the user's training script with ``SHOAL_WORKER_CONFIG``
pointing at a JSON file (written by the daemon, never by the network) that
names the server, the site's TLS files and the job. The worker keeps one
``Work`` stream open for the job: it says "ready" and the server answers once
work exists (no polling interval), the task arriving in memory of its own;
results go up the same stream and are acknowledged on it.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import queue
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from shoal._memory import tune_allocator
from shoal._proto import shoal_pb2 as pb
from shoal._watchdog import exit_with_parent
from shoal.arrays import arrays_from_bytes, encode_arrays
from shoal.client.model import FLModel
from shoal.errors import (
    BusyError,
    NotAuthorizedError,
    NotFoundError,
    PeerRejectedError,
    TransportError,
    UnavailableError,
)
from shoal.filters import FilterChain, build_chain, specs_from_json
from shoal.privacy.secagg.auth import Credential
from shoal.taskmeta import join_extras, split_extras
from shoal.transport import (
    PayloadHeader,
    TLSConfig,
    from_rpc_error,
    open_channel,
    read_header,
    receive_to_memory,
)
from shoal.transport.frames import (
    INLINE_MAX,
    Frame,
    MemoryPool,
    WireFrame,
    frames_from_pieces,
    human_bytes,
)
from shoal.transport.services import ServiceStub

__all__ = ["GrpcBackend", "WorkerConfig"]

log = logging.getLogger("shoal.worker")

#: Largest task a worker accepts (a model far beyond any real one).
MAX_TASK_BYTES = 64 * 1024**3
#: What this worker tries again after: the server unreachable, gone mid-stream
#: or the stream stalled, or not running the job yet (restarted, the job not
#: resumed). gRPC retries a call the server ended before answering, and waits
#: for a server that is down (``transport.channels``); these loops take what
#: it cannot: a stream that had answered, a NOT_FOUND past 5 attempts.
_RETRYABLE = (UnavailableError, NotFoundError)
#: How long a result is offered again while the server is still receiving
#: another upload of it (BusyError): an earlier worker's, after a partition,
#: whose dead stream the server's stall watch ends (``--transfer-stall-s``,
#: 30 s by default). Past it the result is given up, as a refused one is.
BUSY_RETRY_S = 120.0


@dataclass(frozen=True)
class WorkerConfig:
    """What a job worker needs to know; written by the site daemon."""

    server_address: str
    server_name: str
    ca_path: str
    cert_path: str
    key_path: str
    job_id: str
    site_name: str
    site_index: int
    num_sites: int
    job_dir: str
    #: The site daemon's pid: the worker exits if the daemon dies.
    parent_pid: int = 0
    #: The site's and the job's filters by site point, in the order they run
    #: (``shoal.filters.specs_to_json`` form).
    filters: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: The job's ``app/`` folder, where job filters resolve.
    app_dir: str = ""
    #: The site's folder for this job's state (``shoal.client.state_dir()``):
    #: kept when the daemon restarts the job's worker; "" for none.
    state_dir: str = ""
    #: The job's name (names a site-side tracking run).
    job_name: str = ""
    #: The job's ``tracking:`` section (``TrackingSpec.to_dict()``) when this
    #: worker tracks its own metrics (``site_metrics: site``, and the site
    #: allows it); {} for none.
    tracking: dict[str, Any] = field(default_factory=dict)
    #: The site forbids its metrics to leave for a tracker: results say so
    #: (``shoal.observe.tracking.PRIVATE_META``).
    metrics_private: bool = False
    #: A secure-aggregation job's signing credential (a file the site
    #: daemon wrote, ``shoal.privacy.secagg.Credential``); "" for other jobs.
    secagg_credential: str = ""

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)

    @classmethod
    def from_file(cls, path: str | Path) -> WorkerConfig:
        data: dict[str, Any] = json.loads(Path(path).read_text())
        return cls(**data)


def _log_to_job_log() -> None:
    """Send the worker's INFO lines (task sizes and times) to the job's log.

    The worker runs inside the user's script, whose stdout/stderr the site
    daemon writes to the job log; without a handler Python would drop INFO.
    The script's own logging setup, if any, is left alone.
    """
    shoal_log = logging.getLogger("shoal")  # the worker's and the filters' lines
    if shoal_log.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
    shoal_log.addHandler(handler)
    shoal_log.setLevel(logging.INFO)
    shoal_log.propagate = False


def _finite_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics as JSON numbers: a NaN or infinite one (a diverged loss)
    is left out with a warning, since the server takes strict JSON only."""
    out = {}
    for name, value in metrics.items():
        number = float(value)
        if math.isfinite(number):
            out[name] = number
        else:
            log.warning("metric %r is %r: not sent (not a finite number)", name, number)
    return out


class _WorkStream:
    """The worker's end of one ``Fleet.Work`` stream (sync gRPC).

    gRPC's sending thread draws requests from :meth:`_requests`, which hands
    on whatever payloads :meth:`send` queued (a result's frames are produced,
    and hashed, as they go out); replies are read from :attr:`replies`.
    """

    def __init__(self, stub: ServiceStub) -> None:
        self._outbox: queue.SimpleQueue[Iterable[Frame] | None] = queue.SimpleQueue()
        self.replies: Iterator[WireFrame] = stub.Work(self._requests())

    def _requests(self) -> Iterator[Frame]:
        while (frames := self._outbox.get()) is not None:
            yield from frames

    def send(self, frames: Iterable[Frame]) -> None:
        self._outbox.put(frames)

    def close(self) -> None:
        """End the stream: the sending thread returns, the call is cancelled."""
        self._outbox.put(None)
        self.replies.cancel()  # type: ignore[attr-defined]


class GrpcBackend:
    """ClientBackend over the Fleet service."""

    def __init__(self, config: WorkerConfig) -> None:
        if config.parent_pid:
            exit_with_parent(config.parent_pid)
        # The daemons' settings: 1 MiB chunk buffers come from two arenas and
        # are reused. A 256 KiB threshold (every chunk mapped and faulted in
        # afresh) cost CPU each round and saved no peak memory once tasks
        # stopped going through a file (bench/memory.py, 100 MiB, 2/8/32
        # sites: worker peak 273/337/346 MiB with this, 277/363/327 with it).
        tune_allocator()
        self.config = config
        self.site_name = config.site_name
        self.job_id = config.job_id
        self.site_index = config.site_index
        self.num_sites = config.num_sites
        self.state_dir = Path(config.state_dir) if config.state_dir else None
        self.job_name = config.job_name
        self.tracking = config.tracking
        self.metrics_private = config.metrics_private
        self.filters: dict[str, FilterChain] = {
            point: build_chain(
                point,
                specs_from_json(specs),
                app_dir=Path(config.app_dir) if config.app_dir else None,
            )
            for point, specs in config.filters.items()
        }
        #: The project's CA: secure aggregation checks the peers' keys against it.
        self.ca_pem = Path(config.ca_path).read_bytes()
        self.secagg_credential: Credential | None = (
            Credential.from_file(config.secagg_credential) if config.secagg_credential else None
        )
        tls = TLSConfig(
            ca_pem=self.ca_pem,
            cert_pem=Path(config.cert_path).read_bytes(),
            key_pem=Path(config.key_path).read_bytes(),
        )
        self._channel = open_channel(config.server_address, tls, server_name=config.server_name)
        self._stub = ServiceStub(self._channel, "Fleet")
        self._stream: _WorkStream | None = None
        self._task: PayloadHeader | None = None
        # Each task lands in the memory of one before it that the script no
        # longer uses, when there is one: a fresh page costs a fault and a
        # clearing (receiving 100 MiB: 76-87 ms of CPU so, 83-96 ms afresh).
        self._task_memory = MemoryPool()

    def _work(self) -> _WorkStream:
        if self._stream is None:
            self._stream = _WorkStream(self._stub)
        return self._stream

    def _drop_stream(self) -> None:
        """After an error the stream is done with: the next call opens a new one."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    @classmethod
    def from_config_file(cls, path: str) -> GrpcBackend:
        _log_to_job_log()
        return cls(WorkerConfig.from_file(path))

    def next_task(self) -> FLModel | None:
        delay = 0.2
        waited_from = time.monotonic()
        ready = PayloadHeader(kind="ready", job_id=self.job_id, size=0, meta={"wait_s": 30.0})
        while True:
            try:
                stream = self._work()
                stream.send((pb.Frame(header=ready.to_pb()),))
                frames = stream.replies
                header = read_header(frames)
                # The server answers once work exists: time the transfer from
                # its first frame, and report the wait separately.
                t0 = time.monotonic()
                if header.kind == "none":
                    continue
                if header.kind == "done":
                    log.info("job %s: no more tasks", self.job_id)
                    return None
                if header.kind != "task":
                    raise TransportError(f"unexpected reply {header.kind!r} to 'ready'")
                # Into memory of its own, not a file: writing the model into
                # the page cache and mapping it back was the workers' largest
                # kernel cost in perf (100 MiB, 2 sites).
                data = receive_to_memory(
                    header, frames, max_size=MAX_TASK_BYTES, pool=self._task_memory
                )
                size = len(data)
            except grpc.RpcError as exc:
                self._drop_stream()
                err = from_rpc_error(exc, "waiting for a task")
                if isinstance(err, _RETRYABLE):
                    log.info("server not ready (%s); retrying in %.1f s", err, delay)
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 5.0)
                    continue
                raise err from None
            except BaseException:
                self._drop_stream()  # mid-payload: the stream is out of step
                raise
            elapsed = time.monotonic() - t0
            meta = dict(header.meta)
            log.info(
                "Received from server. getTask: %s size: %s (%d Bytes) time: %.6f seconds "
                "(round %s, waited %.3f s for it)",
                meta.get("task", "train"),
                human_bytes(size),
                size,
                elapsed,
                meta.get("round"),
                t0 - waited_from,
            )
            self._task = header
            params, extras = split_extras(arrays_from_bytes(data))
            return FLModel(
                params=params,
                extras=extras,
                current_round=meta.get("current_round", meta.get("round")),
                total_rounds=meta.get("total_rounds"),
                meta=meta,
                task=str(meta.get("task", "train")),
            )

    def send(self, model: FLModel) -> None:
        task = self._task
        if task is None:
            raise TransportError("send() without a task")
        # Checked now, before the upload starts; streamed from the arrays'
        # own memory, hashed on the way (no staging file).
        arrays = join_extras(model.params, model.extras)
        encoded = encode_arrays(arrays)
        meta: dict[str, Any] = {
            "site": self.site_name,
            "num_examples": int(model.num_examples),
            "metrics": _finite_metrics(model.metrics),
        }
        if model.meta:
            meta["meta"] = dict(model.meta)
        if model.params_type != "full":
            meta["params_type"] = model.params_type
        header = PayloadHeader(kind="result", job_id=self.job_id, task_id=task.task_id, meta=meta)
        t0 = time.monotonic()
        size = encoded.size
        attempt = 0
        busy_delay, busy_until = 0.5, t0 + BUSY_RETRY_S
        while True:
            try:
                stream = self._work()
                frames = frames_from_pieces(header, size, encoded.pieces)
                if size > INLINE_MAX:
                    # The header alone first: the server says "go" once it
                    # has a transfer slot for it (and still wants it).
                    stream.send(itertools.islice(frames, 1))
                    go = read_header(stream.replies)
                    if go.kind != "go":
                        raise TransportError(f"unexpected reply {go.kind!r} to a result header")
                stream.send(frames)
                reply = read_header(stream.replies)
                if reply.kind != "ack":
                    raise TransportError(f"unexpected reply {reply.kind!r} to a result")
                break
            except grpc.RpcError as exc:
                self._drop_stream()
                err = from_rpc_error(exc, "sending the result")
                if isinstance(err, BusyError) and time.monotonic() < busy_until:
                    log.info("%s; offering it again in %.1f s", err, busy_delay)
                    time.sleep(busy_delay)
                    busy_delay = min(busy_delay * 2, 5.0)
                    encoded = encode_arrays(arrays)
                    continue
                if isinstance(err, (PeerRejectedError, NotAuthorizedError, BusyError)):
                    # A stale task (the server restarted or moved on): the
                    # next receive() brings the current one.
                    log.warning("result for task %s not accepted: %s", task.task_id, err)
                    break
                if not isinstance(err, _RETRYABLE) or attempt == 4:
                    raise err from None
                time.sleep(0.5 * 2**attempt)
                attempt += 1
                encoded = encode_arrays(arrays)
            except BaseException:
                self._drop_stream()
                raise
        log.info(
            "Sent result to server: round %s size: %s time: %.6f seconds",
            task.meta.get("round"),
            human_bytes(size),
            time.monotonic() - t0,
        )
        self._task = None

    def close(self) -> None:
        self._drop_stream()
        self._channel.close()
