"""The daemons' Prometheus endpoints, scraped over HTTP while a real job runs.

A server and two sites from real POC kits run in this process, each with its
own registry (they would collide in prometheus_client's global one), on
loopback ports picked by the OS. The job is hello-numpy, submitted with the
admin's kit; its workers are real processes.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoal import poc
from shoal.admin.session import AdminSession
from shoal.client.daemon import SiteDaemon, SiteOptions
from shoal.observe.metrics import METRIC_NAMES, certificate_days_left, is_loopback
from shoal.provision import load_kit
from shoal.server.daemon import ServerDaemon, ServerOptions

HELLO_NUMPY = Path(__file__).resolve().parents[2] / "examples" / "hello-numpy"


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``{sample name: {sorted labels: value}}`` from ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def one(samples: dict, name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


def _until(what, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if what():
            return True
        time.sleep(0.1)
    return bool(what())


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[tuple[ServerDaemon, list[SiteDaemon], poc.PocLayout]]:
    layout = poc.prepare(tmp_path / "poc", num_sites=2)
    server = ServerDaemon(
        load_kit(layout.server_kit),
        ServerOptions(
            host="127.0.0.1",
            fed_port=0,
            admin_port=0,
            health_port=-1,
            workspace=tmp_path / "server-ws",
            metrics_port=0,
        ),
    )
    sites: list[SiteDaemon] = []
    with server:
        for name, kit in layout.site_kits.items():
            site = SiteDaemon(
                load_kit(kit),
                SiteOptions(
                    server_address=f"127.0.0.1:{server.ports['fed']}",
                    workspace=tmp_path / f"{name}-ws",
                    metrics_port=0,
                    max_backoff_s=0.5,
                ),
            )
            site.start()
            sites.append(site)
        try:
            yield server, sites, layout
        finally:
            for site in sites:
                site.stop()


def test_server_and_sites_export_their_metrics_while_a_job_runs(daemons) -> None:  # type: ignore[no-untyped-def]
    server, sites, layout = daemons
    port = server.ports["metrics"]
    assert all(s.connected.wait(30) for s in sites), "the sites never connected"
    assert _until(lambda: one(scrape(port), "shoal_sites_connected") == 2)
    before = scrape(port)
    assert one(before, "shoal_sites_known") == 2
    assert (
        "shoal_rounds_completed_total" not in before
        or not before["shoal_rounds_completed_total"][()]
    )
    # Days left on the kit's certificates: provisioned today, valid for a year or more.
    assert 300 < one(before, "shoal_certificate_expiry_days", certificate="server") < 4000
    assert one(before, "shoal_certificate_expiry_days", certificate="ca") > 300

    with AdminSession.from_kit(
        layout.admin_kit, server_address=f"127.0.0.1:{server.ports['admin']}"
    ) as admin:
        job_id = admin.submit_job(HELLO_NUMPY)
        meta = admin.wait_for_job(job_id, timeout=120)
    assert meta.status == "FINISHED:COMPLETED"

    after = scrape(port)
    rounds = 5  # examples/hello-numpy/job.yml
    assert one(after, "shoal_rounds_completed_total") == rounds
    assert one(after, "shoal_round_duration_seconds_count") == rounds
    assert 0 < one(after, "shoal_round_duration_seconds_sum") < 120
    assert one(after, "shoal_jobs", state="FINISHED:COMPLETED") == 1
    # Both sites fetched the job and sent a result each round.
    assert one(after, "shoal_transfer_bytes_total", direction="out", kind="job") > 0
    assert one(after, "shoal_transfer_bytes_total", direction="out", kind="model") > 0
    assert one(after, "shoal_transfer_bytes_total", direction="in", kind="model") > 0
    assert one(after, "shoal_transfers_waiting") == 0

    for site in sites:
        assert site.metrics_port is not None and site.metrics_port != port
        assert _until(lambda s=site: "shoal_site_worker_exits_total" in scrape(s.metrics_port))
        mine = scrape(site.metrics_port)
        assert one(mine, "shoal_site_connected") == 1
        assert one(mine, "shoal_site_worker_starts_total") == 1
        assert one(mine, "shoal_site_worker_restarts_total") == 0
        assert one(mine, "shoal_site_worker_exits_total", state="finished") == 1
        assert one(mine, "shoal_site_jobs_running") == 0
        assert one(mine, "shoal_transfer_bytes_total", direction="in", kind="job") > 0
        assert one(mine, "shoal_certificate_expiry_days", certificate="site") > 300

    # The names both daemons export are the documented list, no more, no less
    # (prometheus_client adds a *_created series per counter: its own bookkeeping).
    exported = {
        name.removesuffix("_total").removesuffix("_count").removesuffix("_sum")
        for p in (port, *(s.metrics_port for s in sites))
        for name in scrape(p)
        if not name.endswith("_created") and not name.endswith("_bucket")
    }
    assert exported == METRIC_NAMES


def test_a_daemon_without_a_metrics_port_serves_none(tmp_path: Path) -> None:
    layout = poc.prepare(tmp_path / "poc", num_sites=1)
    server = ServerDaemon(
        load_kit(layout.server_kit),
        ServerOptions(
            host="127.0.0.1", fed_port=0, admin_port=0, health_port=-1, workspace=tmp_path / "ws"
        ),
    )
    with server:
        assert "metrics" not in server.ports
        # Still counted, for whoever embeds the daemon and reads its registry.
        assert server.metrics is not None


def test_loopback_and_certificate_helpers() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")
    from datetime import datetime, timedelta, timezone

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=10))
        .sign(key, hashes.SHA256())
    )
    days = certificate_days_left(cert.public_bytes(Encoding.PEM), now=now)
    assert days == pytest.approx(10.0)
