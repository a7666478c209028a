"""Runs many real SiteDaemon objects in one process, each from its own site kit
(identity = certificate CN, so every site needs its own kit). For bench/scale.py.

    python bench/_site_host.py [--light] SERVER_ADDRESS KIT_DIR [KIT_DIR ...]   # until stdin closes

``--light``: each site runs a job's worker as a coroutine on one asyncio loop
of this process instead of a worker process. The coroutine speaks the worker
side of the Fleet protocol with the site's own mTLS channel (``grpc.aio``):
GetTask long-polls, the task's frames checked and decoded with shoal's own
transport and array code, the model echoed back by PutResult. It does not run
the job's script: this is the bench's stand-in for 1000 sites' worth of worker
processes (about 60 MiB and 0.3 s of start-up each), which would not fit on
one machine; production site daemons always start a process.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from pathlib import Path
from typing import Any

import grpc

from shoal._proto import shoal_pb2 as pb
from shoal.arrays import arrays_from_bytes, encode_arrays
from shoal.client.daemon import SiteDaemon, SiteOptions
from shoal.client.worker import MAX_TASK_BYTES, WorkerConfig
from shoal.provision import load_kit
from shoal.transport import PayloadHeader, TLSConfig, channel_credentials, read_header
from shoal.transport.channels import channel_options
from shoal.transport.frames import decode_frame, encode_frame, frames_from_pieces, receive_bytes

_FLEET = "/shoal.v1.Fleet/"


class AsyncWorkers:
    """One asyncio loop (a thread of this process) running every light worker."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="light-workers", daemon=True).start()

    def run(self, config: WorkerConfig) -> None:
        """Run one site's worker for one job to its end (blocks the calling thread)."""
        asyncio.run_coroutine_threadsafe(_echo_worker(config), self.loop).result()


async def _echo_worker(config: WorkerConfig) -> None:
    tls = TLSConfig(
        ca_pem=Path(config.ca_path).read_bytes(),
        cert_pem=Path(config.cert_path).read_bytes(),
        key_pem=Path(config.key_path).read_bytes(),
    )
    async with grpc.aio.secure_channel(
        config.server_address,
        channel_credentials(tls),
        options=channel_options(config.server_name),
    ) as ch:
        get_task = ch.unary_stream(
            _FLEET + "GetTask",
            request_serializer=pb.TaskRequest.SerializeToString,
            response_deserializer=decode_frame,
        )
        put_result = ch.stream_unary(
            _FLEET + "PutResult",
            request_serializer=encode_frame,
            response_deserializer=pb.Ack.FromString,
        )
        while True:
            call = get_task(pb.TaskRequest(job_id=config.job_id, wait_s=30.0))
            frames = iter([f async for f in call])
            header = read_header(frames)
            if header.kind == "none":
                continue
            if header.kind == "done":
                return
            params = arrays_from_bytes(receive_bytes(header, frames, max_size=MAX_TASK_BYTES))
            encoded = encode_arrays(params)
            result = PayloadHeader(
                kind="result",
                job_id=config.job_id,
                task_id=header.task_id,
                meta={"site": config.site_name, "num_examples": 10, "metrics": {"loss": 0.0}},
            )
            await put_result(iter(list(frames_from_pieces(result, encoded.size, encoded.pieces))))


class LightSite(SiteDaemon):
    """A real site daemon whose job workers are coroutines of ``workers``."""

    workers: AsyncWorkers

    def _run_job(self, start: Any, worker: Any) -> None:
        job_dir = self.workspace / "jobs" / start.job_id
        state, detail = "failed", ""
        try:
            _, _, _, meta = self._prepare(start, job_dir)
            config = self._worker_config(start.job_id, job_dir, meta)
            self._report(start.job_id, "started", "bench coroutine")
            self.workers.run(config)
            state = "finished"
        except grpc.aio.AioRpcError as exc:
            detail = f"worker RPC {exc.code().name}: {exc.details()}"
        except Exception as exc:  # report it like a failed worker would
            detail = f"{type(exc).__name__}: {exc}"
        finally:
            self._report(start.job_id, state, detail)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    # Thousands of threads per process: keep their stacks small.
    threading.stack_size(512 * 1024)
    args = sys.argv[1:]
    light = args[:1] == ["--light"]
    if light:
        args = args[1:]
    address, kits = args[0], args[1:]
    cls = LightSite if light else SiteDaemon
    if light:
        LightSite.workers = AsyncWorkers()
    daemons = []
    for k in kits:
        d = cls(load_kit(Path(k), expected_type="client"), SiteOptions(server_address=address))
        d.start()
        daemons.append(d)
    print("started", len(daemons), flush=True)
    sys.stdin.read()
    for d in daemons:
        d.request_stop()
    for d in daemons:
        d.stop()


if __name__ == "__main__":
    main()
