"""TLS material as a value object, and gRPC credentials built from it.

Every connection in shoal is mutual TLS: the server requires and verifies a
client certificate against the project's root CA, and clients verify the
server's certificate *and its name* (the server participant's name, which is
in its certificate's SANs) whatever address they dial.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import grpc

__all__ = ["TLSConfig", "TLSSource", "channel_credentials", "server_credentials"]


class TLSSource(Protocol):
    @property
    def ca_pem(self) -> bytes: ...
    @property
    def cert_pem(self) -> bytes: ...
    @property
    def key_pem(self) -> bytes: ...


@dataclass(frozen=True)
class TLSConfig:
    """PEM-encoded material for one side of a mutual-TLS connection."""

    #: The project's root CA certificate: the only trust anchor.
    ca_pem: bytes
    #: This participant's certificate, signed by the CA.
    cert_pem: bytes
    #: This participant's private key.
    key_pem: bytes

    @classmethod
    def of(cls, source: TLSSource) -> TLSConfig:
        return cls(ca_pem=source.ca_pem, cert_pem=source.cert_pem, key_pem=source.key_pem)


def server_credentials(tls: TLSSource) -> grpc.ServerCredentials:
    """Server side: present our certificate, require a client cert from our CA."""
    return grpc.ssl_server_credentials(
        [(tls.key_pem, tls.cert_pem)],
        root_certificates=tls.ca_pem,
        require_client_auth=True,
    )


def channel_credentials(tls: TLSSource) -> grpc.ChannelCredentials:
    """Client side: trust only the project CA, present our certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca_pem,
        private_key=tls.key_pem,
        certificate_chain=tls.cert_pem,
    )
