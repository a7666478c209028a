"""The primitives of one SecAgg round, all from ``cryptography``.

* X25519 key pairs, two per site and round (Bonawitz et al.: ``c`` to
  encrypt shares between two sites, ``s`` to agree on their pairwise mask
  seed; only ``s``'s private key is ever secret-shared).
* HKDF-SHA256 turns an X25519 shared secret into a 32-byte key, bound to
  its use, the job, the round and the pair (:class:`Context`).
* ChaCha20-Poly1305 encrypts a site's shares for one neighbour, the
  context and both names as associated data: the server that relays the
  ciphertext cannot change it, nor hand it to another site as its own.
* SHA-256 commits to each share (:func:`commitment`), so a share revealed
  later that is not the one dealt is caught.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "KEY_BYTES",
    "Context",
    "DecryptError",
    "KeyPair",
    "commitment",
    "decrypt",
    "encrypt",
    "label",
    "mask_seed",
    "public_of",
    "share_key",
]

#: An X25519 key (public or private) as raw bytes.
KEY_BYTES = 32
_NONCE_BYTES = 12


class DecryptError(ValueError):
    """A ciphertext that does not open: forged, altered, or for someone else."""


@dataclass(frozen=True)
class Context:
    """What binds every key, ciphertext and signature to one round of one job."""

    job_id: str
    round: int

    def label(self, purpose: str, *names: str) -> bytes:
        return label(purpose, self.job_id, str(self.round), *names)


def label(*parts: str) -> bytes:
    """``parts`` as bytes for a key derivation, signature or hash, behind
    the protocol's name; length-prefixed, so no two lists give the same bytes."""
    return b"".join(
        len(p.encode()).to_bytes(4, "big") + p.encode() for p in ("shoal-secagg-v1", *parts)
    )


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair as raw bytes."""

    private: bytes
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        key = X25519PrivateKey.generate()
        return cls(
            private=key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            ),
            public=key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            ),
        )


def public_of(private: bytes) -> bytes:
    """The X25519 public key of ``private`` (raw)."""
    return (
        X25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def _agree(private: bytes, public: bytes, info: bytes) -> bytes:
    try:
        shared = X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(public)
        )
    except ValueError as exc:  # a low-order point: an all-zero shared secret
        raise DecryptError(f"key agreement failed: {exc}") from None
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def share_key(ctx: Context, private: bytes, public: bytes, me: str, peer: str) -> bytes:
    """The AEAD key of the pair ``(me, peer)`` (``c`` keys), the same both ways."""
    return _agree(private, public, ctx.label("share-key", *_pair(me, peer)))


def mask_seed(ctx: Context, private: bytes, public: bytes, me: str, peer: str) -> bytes:
    """The pairwise mask seed of ``(me, peer)`` (``s`` keys), the same both ways."""
    return _agree(private, public, ctx.label("mask-seed", *_pair(me, peer)))


def encrypt(ctx: Context, key: bytes, dealer: str, holder: str, plaintext: bytes) -> bytes:
    """``nonce || ChaCha20-Poly1305(plaintext)``, bound to the round and both names."""
    nonce = os.urandom(_NONCE_BYTES)
    aad = ctx.label("shares", dealer, holder)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def decrypt(ctx: Context, key: bytes, dealer: str, holder: str, ciphertext: bytes) -> bytes:
    """The plaintext of :func:`encrypt`; DecryptError if it does not open."""
    if len(ciphertext) < _NONCE_BYTES + 16:
        raise DecryptError("ciphertext too short")
    nonce, body = ciphertext[:_NONCE_BYTES], ciphertext[_NONCE_BYTES:]
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, body, ctx.label("shares", dealer, holder))
    except InvalidTag:
        raise DecryptError(f"the shares {dealer} sent {holder} do not open") from None


def commitment(ctx: Context, dealer: str, holder: str, kind: str, share: bytes) -> str:
    """SHA-256 of a share and whose it is, hex. A share is a uniform field
    element of 521 bits: its hash reveals nothing of it."""
    return hashlib.sha256(ctx.label("commit", dealer, holder, kind) + share).hexdigest()
