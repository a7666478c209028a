"""Keys a site advertises, authenticated by its certificate from the project's PKI.

Bonawitz et al.'s variant against a malicious server has every site sign
its public keys, so the server that relays them cannot put its own in
their place. A site's certificate key must sign, but job code never holds
it (docs/security.md): instead the site daemon, which does, makes a fresh
Ed25519 key for each job and signs a *delegation* with the site's key::

    ECDSA_site( "delegate", job id, site name, Ed25519 public key )

and hands the job's worker the Ed25519 private key, the delegation and
the site's certificate (:class:`Credential`). The worker signs each
round's two public keys with the Ed25519 key. A peer accepts them only
when the certificate is issued by the project's CA, is valid now, names
the site (CN) as a ``client``, the delegation verifies under its key for
*this* job, and the keys' signature under the delegated key for this job,
round and site (:func:`verify_keys`). The delegated key is good for one
thing, this job's SecAgg keys: stolen by job code, it lets that code sign
what it could send anyway. The server holds none of these keys.

    cred = issue_credential(site="site-1", job_id=j, cert_pem=cert, key_pem=key)  # daemon
    auth = sign_keys(cred, ctx, c_pk, s_pk)                                   # worker
    verify_keys(auth, ctx=ctx, site="site-1", c_pk=c_pk, s_pk=s_pk, ca_pem=ca)  # peer
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shoal.errors import ConfigError
from shoal.privacy.secagg.crypto import Context, label
from shoal.provision.pki import identity_from_cert, verify_issued_by

__all__ = ["AuthError", "Credential", "issue_credential", "sign_keys", "verify_keys"]


class AuthError(ValueError):
    """Keys whose signature, delegation or certificate does not check out."""


def _delegation_label(job_id: str, site: str, public: bytes) -> bytes:
    return label("delegate", job_id, site) + public


def _keys_label(ctx: Context, site: str, c_pk: bytes, s_pk: bytes) -> bytes:
    return ctx.label("advertise", site) + c_pk + s_pk


@dataclass(frozen=True)
class Credential:
    """What a site's worker signs its SecAgg keys with (written by the site daemon)."""

    site: str
    job_id: str
    #: The site's certificate (public), PEM.
    cert_pem: str
    #: The job's Ed25519 private key, raw.
    signing_key: bytes
    #: The site key's signature of the delegation.
    delegation: bytes
    #: The fewest sites this site lets a round sum its update with: the
    #: job's own ``min_clients`` as the site daemon read it (a server that
    #: shrinks a round to the site and its accomplices is refused).
    min_sites: int = 2

    def __repr__(self) -> str:
        return f"Credential(site={self.site!r}, job_id={self.job_id!r}, signing_key=<redacted>)"

    def to_json(self) -> str:
        return json.dumps(
            {
                "site": self.site,
                "job_id": self.job_id,
                "cert_pem": self.cert_pem,
                "signing_key": base64.b64encode(self.signing_key).decode(),
                "delegation": base64.b64encode(self.delegation).decode(),
                "min_sites": self.min_sites,
            }
        )

    @classmethod
    def from_file(cls, path: str | Path) -> Credential:
        try:
            data = json.loads(Path(path).read_text())
            return cls(
                site=str(data["site"]),
                job_id=str(data["job_id"]),
                cert_pem=str(data["cert_pem"]),
                signing_key=base64.b64decode(data["signing_key"], validate=True),
                delegation=base64.b64decode(data["delegation"], validate=True),
                min_sites=int(data.get("min_sites", 2)),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: not a SecAgg credential: {exc}") from None


def issue_credential(
    *, site: str, job_id: str, cert_pem: bytes, key_pem: bytes, min_sites: int = 2
) -> Credential:
    """A fresh Ed25519 key for ``job_id``, delegated by the site's key (the daemon's side)."""
    site_key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(site_key, ec.EllipticCurvePrivateKey):
        raise ConfigError("the site's key is not an EC key; cannot sign a SecAgg delegation")
    signing = Ed25519PrivateKey.generate()
    public = signing.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    delegation = site_key.sign(_delegation_label(job_id, site, public), ec.ECDSA(hashes.SHA256()))
    return Credential(
        site=site,
        job_id=job_id,
        cert_pem=cert_pem.decode("ascii"),
        signing_key=signing.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        ),
        delegation=delegation,
        min_sites=max(2, min_sites),
    )


def sign_keys(cred: Credential, ctx: Context, c_pk: bytes, s_pk: bytes) -> dict[str, str]:
    """The ``auth`` of a site's advertised keys (JSON strings)."""
    if ctx.job_id != cred.job_id:
        raise AuthError(f"the credential is for job {cred.job_id}, not {ctx.job_id}")
    key = Ed25519PrivateKey.from_private_bytes(cred.signing_key)
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    signature = key.sign(_keys_label(ctx, cred.site, c_pk, s_pk))
    return {
        "cert": cred.cert_pem,
        "delegate": base64.b64encode(public).decode(),
        "delegation": base64.b64encode(cred.delegation).decode(),
        "signature": base64.b64encode(signature).decode(),
    }


def _b64(auth: Mapping[str, Any], key: str) -> bytes:
    value = auth.get(key)
    if not isinstance(value, str):
        raise AuthError(f"auth.{key} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise AuthError(f"auth.{key} is not base64") from None


def verify_keys(
    auth: Mapping[str, Any] | None,
    *,
    ctx: Context,
    site: str,
    c_pk: bytes,
    s_pk: bytes,
    ca_pem: bytes,
    now: dt.datetime | None = None,
) -> None:
    """Accept ``site``'s keys for this round only if signed under a
    delegation from a certificate of the project's CA naming ``site``;
    AuthError naming what failed otherwise."""
    if not isinstance(auth, Mapping):
        raise AuthError(f"{site}'s keys are not signed")
    cert_value = auth.get("cert")
    if not isinstance(cert_value, str) or len(cert_value) > 16384:
        raise AuthError(f"{site}'s certificate is missing")
    cert_pem = cert_value.encode("ascii", "replace")
    if not verify_issued_by(cert_pem, ca_pem):
        raise AuthError(f"{site}'s certificate is not issued by the project's CA")
    cert = x509.load_pem_x509_certificate(cert_pem)
    when = now or dt.datetime.now(dt.timezone.utc)
    if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
        raise AuthError(f"{site}'s certificate is not valid now")
    try:
        identity = identity_from_cert(cert_pem)
    except ConfigError as exc:
        raise AuthError(f"{site}'s certificate: {exc}") from None
    if identity.name != site or identity.type != "client":
        raise AuthError(
            f"the certificate relayed for {site} is {identity.type} {identity.name!r}'s"
        )
    delegate = _b64(auth, "delegate")
    site_key = cert.public_key()
    if not isinstance(site_key, ec.EllipticCurvePublicKey):
        raise AuthError(f"{site}'s certificate key is not an EC key")
    try:
        site_key.verify(
            _b64(auth, "delegation"),
            _delegation_label(ctx.job_id, site, delegate),
            ec.ECDSA(hashes.SHA256()),
        )
    except InvalidSignature:
        raise AuthError(f"{site}'s delegation does not verify for job {ctx.job_id}") from None
    try:
        Ed25519PublicKey.from_public_bytes(delegate).verify(
            _b64(auth, "signature"), _keys_label(ctx, site, c_pk, s_pk)
        )
    except (InvalidSignature, ValueError):
        raise AuthError(f"{site}'s keys for round {ctx.round} do not verify") from None
