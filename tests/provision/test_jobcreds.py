"""The job credential authority: per-job worker certificates (issue 16, finding 1)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shoal.errors import PeerRejectedError
from shoal.provision import identity_from_cert
from shoal.provision.jobcreds import JobCredentialAuthority, new_worker_key
from shoal.provision.pki import CertificateAuthority, Identity

SITE = Identity(name="site-1", org="org-a", type="client", role=None, serial=0xBEEF)


def test_a_worker_certificate_names_its_site_job_and_site_certificate(tmp_path: Path) -> None:
    authority = JobCredentialAuthority.load_or_create(tmp_path / "jobca", "server1")
    _, public = new_worker_key()
    cert = authority.issue(SITE, "job-1", public)
    who = identity_from_cert(cert)
    assert (who.name, who.org, who.type, who.job_id, who.site_serial) == (
        "site-1",
        "org-a",
        "worker",
        "job-1",
        0xBEEF,
    )
    assert authority.issued(cert)


def test_the_authority_is_kept_private_and_reused(tmp_path: Path) -> None:
    folder = tmp_path / "jobca"
    first = JobCredentialAuthority.load_or_create(folder, "server1")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "job_ca.key").stat().st_mode) == 0o600
    again = JobCredentialAuthority.load_or_create(folder, "server1")
    assert again.ca_pem == first.ca_pem
    _, public = new_worker_key()
    assert again.issued(first.issue(SITE, "j", public))


def test_only_its_own_certificates_count(tmp_path: Path) -> None:
    authority = JobCredentialAuthority.load_or_create(tmp_path / "a", "server1")
    other = JobCredentialAuthority.load_or_create(tmp_path / "b", "server1")
    _, public = new_worker_key()
    assert not authority.issued(other.issue(SITE, "j", public))
    project = CertificateAuthority.create("proj")
    assert not authority.issued(project.cert_pem)
    assert not authority.issued(b"not a certificate")


def test_refuses_what_is_not_a_site_or_not_an_ec_key(tmp_path: Path) -> None:
    authority = JobCredentialAuthority.load_or_create(tmp_path / "jobca", "server1")
    _, public = new_worker_key()
    admin = Identity(name="a@b", org="o", type="admin", role="lead", serial=1)
    with pytest.raises(PeerRejectedError, match="only sites get job credentials"):
        authority.issue(admin, "j", public)
    rsa_public = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(PeerRejectedError, match="must be an EC key"):
        authority.issue(SITE, "j", rsa_public)
    with pytest.raises(PeerRejectedError, match="unreadable"):
        authority.issue(
            SITE, "j", b"-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n"
        )
    with pytest.raises(PeerRejectedError, match="too large"):
        authority.issue(SITE, "j", b"x" * 5000)
