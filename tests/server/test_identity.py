"""Peer checks without a daemon: real certificates from a provisioned project,
a fake call context, the job credential authority, and a real CRL."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import pytest

from shoal import poc
from shoal.provision import load_kit, revoke
from shoal.provision.jobcreds import JobCredentialAuthority, new_worker_key
from shoal.server.identity import Identities

from .fakes import Aborted, FakeAioContext, FakeContext, site


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> poc.PocLayout:
    return poc.prepare(tmp_path_factory.mktemp("poc"), num_sites=2)


def identities(
    layout: poc.PocLayout, authority: JobCredentialAuthority, crl: Path | None = None
) -> tuple[Identities, list[frozenset[int]]]:
    told: list[frozenset[int]] = []
    kit = load_kit(layout.server_kit)
    checks = Identities(
        crl_path=crl or kit.local / "crl.pem",
        ca_pem=kit.tls.ca_pem,
        job_credentials=authority,
        on_new_crl=told.append,
    )
    return checks, told


def cert(path: Path) -> bytes:
    return load_kit(path).tls.cert_pem


def refusal(checks: Identities, pem: bytes | None, expected: str | tuple[str, ...]) -> Aborted:
    with pytest.raises(Aborted) as info:
        checks.identify(FakeContext(pem), expected_type=expected)
    return info.value


def test_each_port_serves_its_own_kind_of_certificate(
    layout: poc.PocLayout, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checks, _ = identities(layout, JobCredentialAuthority.load_or_create(tmp_path, "server1"))
    site_pem, admin_pem = cert(layout.site_kits["site-1"]), cert(layout.admin_kit)
    assert checks.identify(FakeContext(site_pem), expected_type="client").name == "site-1"
    assert checks.identify(FakeContext(admin_pem), expected_type="admin").type == "admin"
    with caplog.at_level(logging.WARNING, logger="shoal.server.daemon"):
        refused = refusal(checks, admin_pem, "client")
    assert refused.code == grpc.StatusCode.PERMISSION_DENIED
    assert refused.details == "admin@nvidia.com is a admin; this port serves clients only"
    assert (
        "refused admin@nvidia.com (ipv4:127.0.0.1:5): an admin certificate on the site port"
        in caplog.messages
    )
    both = refusal(checks, admin_pem, ("client", "worker"))
    # The wording as sites have always seen it.
    assert both.details == "admin@nvidia.com is a admin; this call serves client or workers only"
    none = refusal(checks, None, "admin")
    assert (none.code, none.details) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "a client certificate is required",
    )


def test_a_worker_counts_only_if_the_job_credential_authority_signed_it(
    layout: poc.PocLayout, tmp_path: Path
) -> None:
    ours = JobCredentialAuthority.load_or_create(tmp_path / "ours", "server1")
    theirs = JobCredentialAuthority.load_or_create(tmp_path / "theirs", "server1")
    site_1 = load_kit(layout.site_kits["site-1"])
    who = site("site-1")
    _, public = new_worker_key()
    worker_pem = ours.issue(who, "job-1", public)
    checks, _ = identities(layout, ours)
    worker = asyncio.run(checks.identify_aio(FakeAioContext(worker_pem), expected_type="worker"))
    assert (worker.type, worker.job_id) == ("worker", "job-1")
    # Another authority's worker is refused; a site's own certificate is
    # still the site's (the job authority signed it not).
    other, _ = identities(layout, theirs)
    refused = refusal(other, worker_pem, "worker")
    assert refused.code == grpc.StatusCode.PERMISSION_DENIED
    assert refused.details == "site-1: a worker certificate from the wrong authority"
    assert (
        checks.identify(FakeContext(site_1.tls.cert_pem), expected_type="client").name == "site-1"
    )


def test_a_new_crl_refuses_the_revoked_and_is_told_once(
    layout: poc.PocLayout, tmp_path: Path
) -> None:
    checks, told = identities(
        layout,
        JobCredentialAuthority.load_or_create(tmp_path, "server1"),
        crl=tmp_path / "crl.pem",
    )
    site_2 = cert(layout.site_kits["site-2"])
    assert checks.identify(FakeContext(site_2), expected_type="client").name == "site-2"
    assert checks.revoked_serials() == frozenset() and told == []
    crl = revoke(layout.workspace / "project.yml", layout.workspace / "kits", "site-2")
    (tmp_path / "crl.pem").write_bytes(crl.read_bytes())
    refused = refusal(checks, site_2, "client")
    assert (refused.code, refused.details) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "certificate of site-2 is revoked",
    )
    assert checks.identify(FakeContext(cert(layout.site_kits["site-1"])), expected_type="client")
    # Read once when it changed, not at every call.
    assert len(told) == 1
    assert told[0] == checks.revoked_serials() != frozenset()
