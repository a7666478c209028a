"""shoal's transport over real gRPC with mutual TLS: handshakes accepted and
refused, payloads through a stream, and gRPC's message cap."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from shoal import checksum
from shoal._proto import shoal_pb2 as pb
from shoal.errors import (
    IntegrityError,
    NotAuthorizedError,
    NotFoundError,
    TransportError,
    UnavailableError,
)
from shoal.provision import Kit
from shoal.transport import (
    PayloadHeader,
    TLSConfig,
    frames_from_bytes,
    frames_from_file,
    from_rpc_error,
    open_channel,
)
from shoal.transport.frames import MAX_CHUNK_SIZE, MAX_MESSAGE_BYTES, Frame

from .conftest import TransferServer, put_call, who_am_i_call


def _who(channel: grpc.Channel) -> str:
    return str(who_am_i_call(channel)(pb.Ack(), timeout=10).message)


def _refused(channel: grpc.Channel) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        who_am_i_call(channel)(pb.Ack(), timeout=10)
    return info.value


# -- handshakes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "seen"), [("site-1", "site-1/client"), ("admin@nvidia.com", "admin@nvidia.com/admin")]
)
def test_handshake_accepted_and_identity_from_certificate(
    kits: dict[str, Kit], transfer_server: TransferServer, name: str, seen: str
) -> None:
    with open_channel(transfer_server.address, kits[name].tls, server_name="server1") as ch:
        assert _who(ch) == seen


def test_no_client_certificate_refused(
    kits: dict[str, Kit], transfer_server: TransferServer
) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=kits["site-1"].tls.ca_pem)
    options = [("grpc.ssl_target_name_override", "server1")]
    with grpc.secure_channel(transfer_server.address, creds, options=options) as ch:
        assert _refused(ch).code() == grpc.StatusCode.UNAVAILABLE


def test_client_certificate_from_another_ca_refused(
    kits: dict[str, Kit], foreign_kits: dict[str, Kit], transfer_server: TransferServer
) -> None:
    # The stranger trusts our CA (so only the server's check can refuse it).
    stranger = foreign_kits["site-1"].tls
    tls = TLSConfig(
        ca_pem=kits["site-1"].tls.ca_pem, cert_pem=stranger.cert_pem, key_pem=stranger.key_pem
    )
    with open_channel(transfer_server.address, tls, server_name="server1") as ch:
        assert _refused(ch).code() == grpc.StatusCode.UNAVAILABLE


def test_server_from_another_ca_refused_by_the_client(
    foreign_kits: dict[str, Kit], transfer_server: TransferServer
) -> None:
    with open_channel(
        transfer_server.address, foreign_kits["site-1"].tls, server_name="server1"
    ) as ch:
        err = _refused(ch)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "CERTIFICATE_VERIFY_FAILED" in (err.details() or "")


def test_server_with_another_name_refused_by_the_client(
    kits: dict[str, Kit], transfer_server: TransferServer
) -> None:
    with open_channel(transfer_server.address, kits["site-1"].tls, server_name="server2") as ch:
        err = _refused(ch)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "Hostname Verification" in (err.details() or "")


# -- payloads --------------------------------------------------------------------


def test_file_crosses_with_hash_checked(
    kits: dict[str, Kit], transfer_server: TransferServer, tmp_path: Path
) -> None:
    src = tmp_path / "weights.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    src.write_bytes(data)
    with open_channel(transfer_server.address, kits["site-1"].tls, server_name="server1") as ch:
        ack = put_call(ch)(
            frames_from_file(PayloadHeader(kind="result"), src, chunk_size=1 << 20), timeout=30
        )
    assert json.loads(ack.meta_json) == {
        "checksum": checksum.of_bytes(data),
        "size": len(data),
    }
    assert (transfer_server.dest_dir / "result").read_bytes() == data


def _corrupted(data: bytes) -> Iterator[Frame]:
    for frame in frames_from_bytes(
        PayloadHeader(kind="result"), data, chunk_size=4096, inline_max=0
    ):
        if isinstance(frame, pb.Frame) and frame.WhichOneof("body") == "trailer":
            frame = pb.Frame(trailer=pb.Trailer(xxh3_128=checksum.of_bytes(b"other")))
        yield frame


def test_corrupted_checksum_is_an_integrity_error_and_leaves_no_file(
    kits: dict[str, Kit], transfer_server: TransferServer
) -> None:
    with (
        open_channel(transfer_server.address, kits["site-1"].tls, server_name="server1") as ch,
        pytest.raises(grpc.RpcError) as info,
    ):
        put_call(ch)(_corrupted(os.urandom(100_000)), timeout=30)
    err = from_rpc_error(info.value, "put")
    assert isinstance(err, IntegrityError)
    assert "checksum (XXH3-128) mismatch" in str(err)
    assert list(transfer_server.dest_dir.iterdir()) == []


def test_oversize_chunk_refused_by_the_message_cap(
    kits: dict[str, Kit], transfer_server: TransferServer
) -> None:
    # A peer that ignores our send cap: plain grpc channel, default (unlimited) send size.
    tls = kits["site-1"].tls
    creds = grpc.ssl_channel_credentials(tls.ca_pem, tls.key_pem, tls.cert_pem)
    options = [("grpc.ssl_target_name_override", "server1")]
    data = b"\0" * (MAX_MESSAGE_BYTES + 1)
    frames = frames_from_bytes(PayloadHeader(kind="result"), data, chunk_size=len(data))
    with (
        grpc.secure_channel(transfer_server.address, creds, options=options) as ch,
        pytest.raises(grpc.RpcError) as info,
    ):
        put_call(ch)(frames, timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert list(transfer_server.dest_dir.iterdir()) == []


def test_our_channel_refuses_to_send_an_oversize_chunk(
    kits: dict[str, Kit], transfer_server: TransferServer
) -> None:
    data = b"\0" * (MAX_MESSAGE_BYTES + 1)
    frames = frames_from_bytes(PayloadHeader(kind="result"), data, chunk_size=len(data))
    with (
        open_channel(transfer_server.address, kits["site-1"].tls, server_name="server1") as ch,
        pytest.raises(grpc.RpcError) as info,
    ):
        put_call(ch)(frames, timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]


def test_largest_allowed_chunk_crosses(
    kits: dict[str, Kit], transfer_server: TransferServer
) -> None:
    data = os.urandom(MAX_CHUNK_SIZE)
    frames = frames_from_bytes(PayloadHeader(kind="result"), data, chunk_size=MAX_CHUNK_SIZE)
    with open_channel(transfer_server.address, kits["site-1"].tls, server_name="server1") as ch:
        ack = put_call(ch)(frames, timeout=60)
    assert json.loads(ack.meta_json)["size"] == MAX_CHUNK_SIZE


# -- the error edge ----------------------------------------------------------------


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.PERMISSION_DENIED, NotAuthorizedError),
        (grpc.StatusCode.DATA_LOSS, IntegrityError),
        (grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, UnavailableError),
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.INTERNAL, TransportError),
    ],
)
def test_status_codes_become_shoal_errors(code: grpc.StatusCode, cls: type) -> None:
    err = from_rpc_error(_FakeRpcError(code, "the reason"), "call")
    assert type(err) is cls
    assert "the reason" in str(err)
