"""shoal.jobs.signature: sign a job as an admin, verify it as a site would.

Real keys and certificates from a CA made in the test; no mocks."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from typing import Any

import pytest

from shoal.errors import JobValidationError, NotAuthorizedError
from shoal.jobs.signature import (
    SIGNING_ROLES,
    JobSignature,
    Signer,
    new_job_id,
    sign_job,
    verify_job_signature,
)
from shoal.provision import Identity
from shoal.provision.pki import CertificateAuthority, TLSMaterial
from shoal.provision.project import Participant
from shoal.server.authz import ROLES, authorize

DIGEST = hashlib.sha256(b"job.zip bytes").hexdigest()


def _tls(ca: CertificateAuthority, name: str, *, org: str = "a", role: str | None = "lead",
         ptype: str = "admin") -> TLSMaterial:  # fmt: skip
    issued = ca.issue(Participant(name=name, type=ptype, org=org, role=role), validity_days=30)
    return TLSMaterial(ca_pem=ca.cert_pem, cert_pem=issued.cert_pem, key_pem=issued.key_pem)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("sig_project")


@pytest.fixture(scope="module")
def alice(ca: CertificateAuthority) -> TLSMaterial:
    return _tls(ca, "alice@a.org", org="a", role="lead")


def _verify(sig: Any, ca: CertificateAuthority, job_id: str, **kw: Any) -> Signer:
    args: dict[str, Any] = {
        "ca_pem": ca.cert_pem,
        "job_id": job_id,
        "archive_sha256": DIGEST,
        "submitter": "alice@a.org",
    }
    args.update(kw)
    return verify_job_signature(sig, **args)


def test_a_signed_job_verifies_and_names_its_signer(ca, alice) -> None:  # type: ignore[no-untyped-def]
    job_id = new_job_id()
    sig = sign_job(job_id=job_id, archive_sha256=DIGEST, tls=alice)
    assert sig.submitter == "alice@a.org" and sig.job_id == job_id
    signer = _verify(sig.to_json(), ca, job_id, submitter_org="a")
    assert (signer.name, signer.org, signer.role) == ("alice@a.org", "a", "lead")
    assert signer.to_dict()["serial"] == format(signer.serial, "x")
    # The stored form round-trips.
    assert JobSignature.from_json(sig.to_json()) == sig


def test_another_archive_is_refused_with_both_hashes(ca, alice) -> None:  # type: ignore[no-untyped-def]
    job_id = new_job_id()
    sig = sign_job(job_id=job_id, archive_sha256=DIGEST, tls=alice)
    other = hashlib.sha256(b"altered").hexdigest()
    with pytest.raises(JobValidationError, match="changed after it was signed") as info:
        _verify(sig.to_json(), ca, job_id, archive_sha256=other)
    assert other[:16] in str(info.value) and DIGEST[:16] in str(info.value)


def test_a_signature_of_another_job_is_refused(ca, alice) -> None:  # type: ignore[no-untyped-def]
    sig = sign_job(job_id=new_job_id(), archive_sha256=DIGEST, tls=alice)
    with pytest.raises(JobValidationError, match="copied from another job"):
        _verify(sig.to_json(), ca, new_job_id())


def test_a_changed_signed_field_breaks_the_signature(ca, alice) -> None:  # type: ignore[no-untyped-def]
    job_id = new_job_id()
    sig = sign_job(job_id=job_id, archive_sha256=DIGEST, tls=alice).to_json()
    other = hashlib.sha256(b"altered").hexdigest()
    forged = {**sig, "document": {**sig["document"], "archive_sha256": other}}
    with pytest.raises(JobValidationError, match="does not verify"):
        _verify(forged, ca, job_id, archive_sha256=other)
    garbage = {**sig, "document": {**sig["document"], "signature": "not base64!"}}
    with pytest.raises(JobValidationError, match="does not verify"):
        _verify(garbage, ca, job_id)


def test_the_signer_must_be_the_recorded_submitter(ca, alice) -> None:  # type: ignore[no-untyped-def]
    job_id = new_job_id()
    sig = sign_job(job_id=job_id, archive_sha256=DIGEST, tls=alice).to_json()
    with pytest.raises(JobValidationError, match="recorded as submitted by bob@a.org"):
        _verify(sig, ca, job_id, submitter="bob@a.org")
    with pytest.raises(JobValidationError, match=r"recorded as submitted by alice@a.org \(b\)"):
        _verify(sig, ca, job_id, submitter_org="b")
    # Bob's certificate put beside Alice's signed document: the key is not his.
    bob = _tls(ca, "bob@a.org")
    swapped = {**sig, "certificate": bob.cert_pem.decode()}
    with pytest.raises(JobValidationError, match="does not verify against bob@a.org"):
        _verify(swapped, ca, job_id, submitter="bob@a.org")


def test_a_certificate_of_another_ca_is_refused(ca) -> None:  # type: ignore[no-untyped-def]
    other = CertificateAuthority.create("sig_project")  # same name, other key
    mallory = _tls(other, "alice@a.org")
    job_id = new_job_id()
    sig = sign_job(job_id=job_id, archive_sha256=DIGEST, tls=mallory)
    with pytest.raises(JobValidationError, match="not issued by this project's CA"):
        _verify(sig.to_json(), ca, job_id)


def test_a_revoked_or_expired_signer_is_refused(ca, alice) -> None:  # type: ignore[no-untyped-def]
    job_id = new_job_id()
    sig = sign_job(job_id=job_id, archive_sha256=DIGEST, tls=alice)
    serial = _verify(sig.to_json(), ca, job_id).serial
    with pytest.raises(JobValidationError, match="is revoked"):
        _verify(sig.to_json(), ca, job_id, revoked=frozenset({serial}))
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=31)
    with pytest.raises(JobValidationError, match="not valid now"):
        _verify(sig.to_json(), ca, job_id, now=later)


def test_only_admins_whose_role_may_submit_sign_jobs(ca) -> None:  # type: ignore[no-untyped-def]
    job_id = new_job_id()
    member = _tls(ca, "m@a.org", role="member")
    sig = sign_job(job_id=job_id, archive_sha256=DIGEST, tls=member)
    with pytest.raises(JobValidationError, match="role 'member' may not submit"):
        _verify(sig.to_json(), ca, job_id, submitter="m@a.org")
    site = _tls(ca, "site-1", ptype="client", role=None)
    sig = sign_job(job_id=job_id, archive_sha256=DIGEST, tls=site)
    with pytest.raises(JobValidationError, match="a client; only admins sign jobs"):
        _verify(sig.to_json(), ca, job_id, submitter="site-1")


def test_signing_roles_are_the_roles_authz_lets_submit() -> None:
    for role in ROLES:
        who = Identity(name="x", org="a", type="admin", role=role, serial=1)
        try:
            authorize(who, "submit_job")
            may = True
        except NotAuthorizedError:
            may = False
        assert may == (role in SIGNING_ROLES), role


def test_an_unsigned_job_is_refused_with_what_to_do(ca) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(JobValidationError, match="not signed by its submitter.*submit it again"):
        _verify(None, ca, new_job_id())


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda s: "text", "must be a JSON object"),
        (lambda s: {**s, "document": []}, "'document' must be a JSON object"),
        (lambda s: {**s, "certificate": "x"}, "'certificate' must be a PEM"),
        (lambda s: {**s, "document": {**s["document"], "kind": "kit"}}, "not a shoal job"),
        (lambda s: {**s, "document": {**s["document"], "algorithm": "md5"}}, "algorithm must"),
        (lambda s: {**s, "document": {**s["document"], "job_id": 7}}, "'job_id' must be"),
        (lambda s: {**s, "document": {**s["document"], "extra": "x"}}, "unknown fields"),
        (
            lambda s: {**s, "certificate": "-----BEGIN CERTIFICATE-----\nAAAA\n"},
            "certificate unreadable",
        ),
    ],
)
def test_malformed_signatures_are_refused_by_name(ca, alice, change, problem) -> None:  # type: ignore[no-untyped-def]
    job_id = new_job_id()
    sig = sign_job(job_id=job_id, archive_sha256=DIGEST, tls=alice).to_json()
    with pytest.raises(JobValidationError, match=problem):
        _verify(change(sig), ca, job_id)


def test_the_signature_is_ecdsa_p256_over_canonical_json(ca, alice) -> None:  # type: ignore[no-untyped-def]
    """Checked with the primitives directly, not through verify_job_signature."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from shoal.provision.signing import canonical_bytes

    sig = sign_job(job_id=new_job_id(), archive_sha256=DIGEST, tls=alice)
    key = x509.load_pem_x509_certificate(alice.cert_pem).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    raw = base64.b64decode(sig.document["signature"])
    key.verify(raw, canonical_bytes(sig.document), ec.ECDSA(hashes.SHA256()))
    assert set(sig.document) == {
        "format", "kind", "algorithm", "job_id", "archive_sha256", "submitter", "signed_at",
        "signature",
    }  # fmt: skip
