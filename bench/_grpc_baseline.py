"""Plain grpcio over mutual TLS, streaming bytes: the practical limit of Python
gRPC on this machine, measured with the same certificates and message size
(1 MiB chunks, `CHUNK_SIZE`) as shoal, but with no files, checksums, protobuf frames
or runtime, and with gRPC's own defaults (flow control, its growing receive
windows): only the message cap and the server name are set, not shoal's
channel and server options.

    python bench/_grpc_baseline.py serve --kit SERVER_KIT --size BYTES   # prints its port
    python bench/_grpc_baseline.py client --kit SITE_KIT --port P --size BYTES

The server streams pre-built random chunks (Download) and counts what it
receives (Upload); the client downloads then uploads ``size`` bytes and prints
one JSON line with both times. Raw bytes, identity (de)serializers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from concurrent import futures  # noqa: E402

from shoal.provision import load_kit  # noqa: E402
from shoal.transport import channel_credentials  # noqa: E402
from shoal.transport.channels import bind_port  # noqa: E402
from shoal.transport.frames import CHUNK_SIZE, MAX_MESSAGE_BYTES  # noqa: E402

_CAP = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]

_ident = lambda b: b  # noqa: E731


def _chunks(size: int) -> list[bytes]:
    # Random and all different: nothing compresses or dedups.
    out = []
    left = size
    while left > 0:
        n = min(CHUNK_SIZE, left)
        out.append(os.urandom(n))
        left -= n
    return out


def serve(kit: Path, size: int) -> None:
    chunks = _chunks(size)

    def download(request: bytes, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]
        yield from chunks

    def upload(it, context):  # type: ignore[no-untyped-def]
        n = 0
        for c in it:
            n += len(c)
        return str(n).encode()

    handler = grpc.method_handlers_generic_handler(
        "bench.Bytes",
        {
            "Download": grpc.unary_stream_rpc_method_handler(
                download, request_deserializer=_ident, response_serializer=_ident
            ),
            "Upload": grpc.stream_unary_rpc_method_handler(
                upload, request_deserializer=_ident, response_serializer=_ident
            ),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=_CAP)
    server.add_generic_rpc_handlers((handler,))
    port = bind_port(server, "127.0.0.1", 0, load_kit(kit, expected_type="server").tls)
    server.start()
    print(port, flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    server.stop(0)


def client(kit: Path, port: int, size: int) -> None:
    k = load_kit(kit, expected_type="client")
    chunks = _chunks(size)
    name = str(k.config["server"]["name"])
    ch = grpc.secure_channel(
        f"127.0.0.1:{port}",
        channel_credentials(k.tls),
        options=[*_CAP, ("grpc.ssl_target_name_override", name), ("grpc.default_authority", name)],
    )
    grpc.channel_ready_future(ch).result(timeout=30)
    down = ch.unary_stream(
        "/bench.Bytes/Download", request_serializer=_ident, response_deserializer=_ident
    )
    up = ch.stream_unary(
        "/bench.Bytes/Upload", request_serializer=_ident, response_deserializer=_ident
    )
    print("ready", flush=True)
    sys.stdin.readline()  # start signal: every client starts together
    t0, cpu0 = time.monotonic(), time.process_time()
    got = sum(len(c) for c in down(b""))
    t1 = time.monotonic()
    sent = int(up(iter(chunks)))
    t2, cpu = time.monotonic(), time.process_time() - cpu0  # all of this process's threads
    assert got == size and sent == size, (got, sent, size)
    doc = {"down_s": t1 - t0, "up_s": t2 - t1, "total_s": t2 - t0, "cpu_s": cpu}
    print(json.dumps(doc), flush=True)
    ch.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["serve", "client"])
    p.add_argument("--kit", type=Path, required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args()
    if a.mode == "serve":
        serve(a.kit, a.size)
    else:
        client(a.kit, a.port, a.size)


if __name__ == "__main__":
    main()
