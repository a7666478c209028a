"""The site registry's expiry: pure logic, no network."""

from __future__ import annotations

import time

from shoal.server.sessions import SiteRegistry, SiteSession


def _session(name: str, silent_for: float) -> SiteSession:
    s = SiteSession(name=name, org="nvidia", peer="ipv4:127.0.0.1:1", serial=1)
    s.last_heartbeat = time.monotonic() - silent_for
    return s


def test_expire_ends_only_silent_sessions_and_tells_listeners() -> None:
    reg = SiteRegistry(heartbeat_timeout_s=30)
    seen: list[tuple[str, bool]] = []
    reg.on_change(lambda name, up: seen.append((name, up)))
    reg.open(_session("site-1", silent_for=31))
    reg.open(_session("site-2", silent_for=5))
    assert reg.expire() == ["site-1"]
    assert reg.connected() == ["site-2"]
    assert seen[-1] == ("site-1", False)


def test_a_heartbeat_after_the_expiry_check_keeps_the_session() -> None:
    # expire() checks, then ends each stale session; a beat landing in between
    # (a loaded server) must keep the site, not drop it with a negative age.
    reg = SiteRegistry(heartbeat_timeout_s=30)
    s = _session("site-1", silent_for=31)
    reg.open(s)
    checked_at = s.last_heartbeat
    assert reg.beat("site-1", s.session_id, [])
    assert not reg.end(s, "no heartbeat", silent_since=checked_at)
    assert reg.connected() == ["site-1"]
    assert reg.end(s, "connection closed")
    assert reg.connected() == []


def test_each_sites_published_policy_outlives_its_session() -> None:
    reg = SiteRegistry(heartbeat_timeout_s=60)
    session = SiteSession(name="site-1", org="o", peer="p")
    reg.open(session)
    reg.set_policy("site-1", {"code": "any", "sha256": "a" * 64})
    reg.end(session, "gone")
    assert reg.policies() == {"site-1": {"code": "any", "sha256": "a" * 64}}
    reg.set_policy("site-1", None)  # a site that publishes none: nothing held against it
    assert reg.policies() == {}
