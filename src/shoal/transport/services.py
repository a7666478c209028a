"""shoal's gRPC services bound with the frame codec.

The generated ``add_*Servicer_to_server`` and ``*Stub`` use protobuf's own
(de)serializers for every message. Here the same services, read from the
.proto's descriptor, are bound with :func:`~shoal.transport.frames.encode_frame`
and :func:`~shoal.transport.frames.decode_frame` wherever a method streams
``Frame`` messages, so payload chunks cross gRPC without protobuf copies. The
method paths and the bytes on the wire are exactly the generated ones: a peer
using the generated stubs interoperates.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor

from shoal._proto import shoal_pb2 as pb
from shoal.transport.frames import decode_frame, encode_frame

__all__ = ["ServiceStub", "add_service"]

_FRAME = pb.Frame.DESCRIPTOR.full_name


def _codec(m: MethodDescriptor) -> tuple[Any, Any, Any, Any]:
    """(request serializer, request deserializer, response serializer, response deserializer)."""
    req = getattr(pb, m.input_type.name)
    resp = getattr(pb, m.output_type.name)
    if m.input_type.full_name == _FRAME:
        req_ser, req_de = encode_frame, decode_frame
    else:
        req_ser, req_de = req.SerializeToString, req.FromString
    if m.output_type.full_name == _FRAME:
        resp_ser, resp_de = encode_frame, decode_frame
    else:
        resp_ser, resp_de = resp.SerializeToString, resp.FromString
    return req_ser, req_de, resp_ser, resp_de


_HANDLERS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def add_service(server: grpc.Server | grpc.aio.Server, servicer: object, service: str) -> None:
    """Serve ``servicer`` as ``shoal.v1.<service>``: a generated ``*Servicer``
    subclass on a sync server, or an object with a coroutine per method (the
    same names) on a ``grpc.aio`` server."""
    desc = pb.DESCRIPTOR.services_by_name[service]
    handlers = {}
    for m in desc.methods:
        _, req_de, resp_ser, _ = _codec(m)
        make = _HANDLERS[(m.client_streaming, m.server_streaming)]
        handlers[m.name] = make(
            getattr(servicer, m.name), request_deserializer=req_de, response_serializer=resp_ser
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(desc.full_name, handlers),)
    )


class ServiceStub:
    """Client side of ``shoal.v1.<service>``: ``stub.FetchJob(request)`` etc."""

    def __init__(self, channel: grpc.Channel, service: str) -> None:
        desc = pb.DESCRIPTOR.services_by_name[service]
        self._calls: dict[str, Any] = {}
        for m in desc.methods:
            req_ser, _, _, resp_de = _codec(m)
            make = {
                (False, False): channel.unary_unary,
                (False, True): channel.unary_stream,
                (True, False): channel.stream_unary,
                (True, True): channel.stream_stream,
            }[(m.client_streaming, m.server_streaming)]
            self._calls[m.name] = make(
                f"/{desc.full_name}/{m.name}",
                request_serializer=req_ser,
                response_deserializer=resp_de,
            )

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_calls"][name]
        except KeyError:
            raise AttributeError(name) from None
