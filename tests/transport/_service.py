"""A small gRPC service over shoal's transport, for tests (no pytest here: the
1 GiB test also runs it in a receiver subprocess).

``test.Transfer/Put`` takes a frame stream and receives it with
``receive_to_file``; ``test.Transfer/WhoAmI`` answers the caller's identity as
the server read it from its verified certificate.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc

from shoal._proto import shoal_pb2 as pb
from shoal.provision import identity_from_cert
from shoal.transport import peer_cert_pem, read_header, receive_to_file, rpc_errors
from shoal.transport.frames import WireFrame, decode_frame, encode_frame

#: Largest payload the test service accepts unless told otherwise.
MAX_PUT = 64 * 1024 * 1024


def transfer_handler(dest_dir: Path, *, max_size: int = MAX_PUT) -> grpc.GenericRpcHandler:
    def put(frames: Iterator[WireFrame], context: grpc.ServicerContext) -> pb.Ack:
        with rpc_errors(context, "test put"):
            header = read_header(frames)
            got = receive_to_file(header, frames, dest_dir / header.kind, max_size=max_size)
            return pb.Ack(
                ok=True, meta_json=json.dumps({"checksum": got.checksum, "size": got.size})
            )
        return pb.Ack(ok=False)  # unreachable: rpc_errors aborted

    def who_am_i(request: pb.Ack, context: grpc.ServicerContext) -> pb.Ack:
        pem = peer_cert_pem(context)
        who = identity_from_cert(pem) if pem else None
        return pb.Ack(ok=who is not None, message=f"{who.name}/{who.type}" if who else "")

    return grpc.method_handlers_generic_handler(
        "test.Transfer",
        {
            "Put": grpc.stream_unary_rpc_method_handler(
                put,
                request_deserializer=decode_frame,
                response_serializer=pb.Ack.SerializeToString,
            ),
            "WhoAmI": grpc.unary_unary_rpc_method_handler(
                who_am_i,
                request_deserializer=pb.Ack.FromString,
                response_serializer=pb.Ack.SerializeToString,
            ),
        },
    )


def put_call(channel: grpc.Channel) -> grpc.StreamUnaryMultiCallable:
    return channel.stream_unary(
        "/test.Transfer/Put",
        request_serializer=encode_frame,
        response_deserializer=pb.Ack.FromString,
    )


def who_am_i_call(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        "/test.Transfer/WhoAmI",
        request_serializer=pb.Ack.SerializeToString,
        response_deserializer=pb.Ack.FromString,
    )
