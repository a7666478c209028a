"""Network faults on a real link: site-2 runs inside a network namespace made
by the test, joined to the root namespace by a veth pair; the server listens
on every interface and site-2 dials the veth address. ``tc`` throttles the
link, ``nft`` cuts it. Skipped (with the reason) where not root or where
ip/tc/nft are missing; the namespace is removed even when a test fails."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest

from .harness import Fed, wait_for, write_job

pytestmark = [pytest.mark.slow, pytest.mark.netns]

#: 2 MB of float32 weights: 16 s each way at 1 Mbit/s.
SIZE = 500_000


def _start(fed: Fed, ns) -> object:  # type: ignore[no-untyped-def]
    fed.start_server(host="0.0.0.0", heartbeat_s=6)
    fed.start_site("site-1")
    fed.start_site("site-2", netns=ns.name, server=f"{ns.host_ip}:{fed.fed_port}")
    admin = fed.admin()
    fed.wait_connected(admin, ["site-1", "site-2"])
    return admin


def _connected_since(admin, site: str) -> datetime | None:  # type: ignore[no-untyped-def]
    for s in admin.check_status()["sites"]:
        if s["name"] == site and s["connected"]:
            return datetime.fromisoformat(s["connected_since"])
    return None


def _partials(run_dir: Path) -> list[Path]:
    return [p for p in (run_dir / "results").rglob("*") if p.name.endswith(".partial")]


def test_site_throttled_to_1mbit_round_goes_on_without_it_and_it_rejoins(
    fed_factory, netns, tmp_path: Path
):
    ns = netns()
    fed = fed_factory()
    admin = _start(fed, ns)
    ns.throttle("1mbit")
    job = write_job(tmp_path / "job", size=SIZE, num_rounds=4, min_clients=1, round_timeout_s=8)
    job_id = admin.submit_job(job)

    # Round 1 times out while site-2 is still moving 2 MB at 1 Mbit/s: the
    # round completes with site-1 alone.
    r1 = wait_for(lambda: fed.round_done(job_id, 1), 120, "round 1")
    assert r1["sites"].keys() == {"site-1"} and r1["missing"] == ["site-2"], r1
    (fed.gate / "hold").touch()
    wait_for(lambda: (fed.gate / "server.r2.aggregated").exists(), 120, "round 2")

    # Full speed again: site-2 is asked again and answers a later round.
    # Round 2 is evaluated once round 3 is out, so round 3 went out while
    # site-2 was still throttled: it may or may not make that one.
    ns.unthrottle()
    (fed.gate / "hold").unlink()
    meta = admin.wait_for_job(job_id, timeout=240)
    assert meta["status"] == "FINISHED:COMPLETED", meta
    rounds = {m["round"]: m for m in fed.metrics(job_id)}
    assert rounds[2]["missing"] == ["site-2"], rounds[2]
    assert sorted(rounds[4]["sites"]) == ["site-1", "site-2"], rounds[4]
    assert not _partials(fed.run_dir(job_id))


def test_link_cut_mid_upload_no_partial_result_and_site_rejoins(fed_factory, netns, tmp_path: Path):
    ns = netns()
    fed = fed_factory()
    admin = _start(fed, ns)
    ns.throttle("1mbit")  # so that the upload takes long enough to cut it halfway
    job = write_job(tmp_path / "job", size=SIZE, num_rounds=3, min_clients=1, round_timeout_s=300)
    job_id = admin.submit_job(job)

    wait_for(lambda: (fed.gate / "site-2.r1.send").exists(), 180, "site-2 to start uploading")
    (fed.gate / "hold").touch()  # hold the workflow after round 1
    time.sleep(3)  # a few hundred KB of 2 MB are through
    assert not (fed.gate / "site-2.r1.sent").exists(), "upload finished before the cut"
    ns.cut()
    cut_at = datetime.now().astimezone()

    # The site's heartbeats stop: it is declared gone, the round completes
    # with site-1, and the half-received upload is thrown away.
    wait_for(lambda: (fed.gate / "server.r1.aggregated").exists(), 120, "round 1 without site-2")
    run_dir = fed.run_dir(job_id)
    wait_for(lambda: not _partials(run_dir), 120, "the partial upload to be discarded")
    assert not list((run_dir / "results").rglob("site-2.safetensors"))

    ns.restore()
    ns.unthrottle()
    wait_for(
        lambda: (t := _connected_since(admin, "site-2")) is not None and t > cut_at,
        120,
        "site-2 to reconnect after the link is back",
    )
    (fed.gate / "hold").unlink()
    meta = admin.wait_for_job(job_id, timeout=240)
    assert meta["status"] == "FINISHED:COMPLETED", meta
    rounds = {m["round"]: m for m in fed.metrics(job_id)}
    assert sorted(rounds[1]["sites"]) == ["site-1"] and rounds[1]["missing"] == ["site-2"]
    assert sorted(rounds[3]["sites"]) == ["site-1", "site-2"], rounds
