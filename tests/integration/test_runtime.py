"""Issue 3: the secure runtime's life cycle with real processes from real kits.

Server and sites are real daemons (``shoal server`` / ``shoal client``)
started from provisioned kits by the POC fixtures, mutual TLS on 127.0.0.1
with free ports. Killing, restarting and stopping them is done with signals,
as an operator or an orchestrator would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shoal import __version__, poc
from shoal.provision import identity_from_cert

from .conftest import Federation

pytestmark = [
    # poc starts daemons detached: their Popen objects are dropped while they run.
    pytest.mark.filterwarnings(r"ignore:subprocess \d+ is still running:ResourceWarning"),
]


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def connected(fed: Federation) -> set[str]:
    """Sites the server reports connected; empty while the server is down."""
    try:
        with poc.admin_session(fed.workspace, timeout=5) as s:
            st = s.check_status()
    except Exception:  # the server is restarting: nothing is connected
        return set()
    return {x["name"] for x in st["sites"] if x["connected"]}


def going_away(log: Path, times: int) -> Callable[[], bool]:
    """The site's log says the server is going away at least ``times`` times."""

    def check() -> bool:
        text = log.read_text(errors="replace") if log.exists() else ""
        return text.count("server is going away") >= times

    return check


def test_check_status_lists_both_sites(federation: Federation) -> None:
    st = federation.admin().check_status()
    assert st["server"]["name"] == "server1"
    sites = {s["name"]: s for s in st["sites"]}
    assert set(sites) == {"site-1", "site-2"}
    assert all(s["connected"] for s in sites.values())
    assert all(s["address"].startswith("ipv4:127.0.0.1:") for s in sites.values())
    # Versions and certificate expiry, as the kits' certificates say (the dashboard shows them).
    kit_cert = (federation.layout.site_kits["site-1"] / "startup" / "client.crt").read_bytes()
    expires = identity_from_cert(kit_cert).not_after
    assert expires is not None and sites["site-1"]["cert_not_after"] == expires.isoformat()
    assert st.sites[0].shoal_version == __version__
    assert st.server.version == __version__ and st.server.cert_not_after

    cli = [
        sys.executable,
        "-m",
        "shoal",
        "admin",
        "--kit",
        str(federation.layout.admin_kit),
        "--server",
        federation.layout.admin_address,
    ]
    table = subprocess.run([*cli, "check_status"], capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    assert "site-1" in table.stdout and "site-2" in table.stdout
    doc = subprocess.run(
        [*cli, "--json", "check_status"], capture_output=True, text=True, timeout=120
    )
    assert doc.returncode == 0, doc.stderr
    data = json.loads(doc.stdout)
    assert data["ok"] is True
    names = {s["name"]: s["connected"] for s in data["result"]["sites"]}
    assert names == {"site-1": True, "site-2": True}


def test_killed_site_is_gone_then_back(
    federation_factory: Callable[..., Federation],
    spawn: Callable[..., subprocess.Popen[bytes]],
) -> None:
    fed = federation_factory(2, heartbeat_timeout_s=3)
    os.kill(fed.pid("site-1"), signal.SIGKILL)
    wait_for(lambda: connected(fed) == {"site-2"}, "site-1 to be reported gone")
    spawn(
        "client", "--kit", str(fed.layout.site_kits["site-1"]), "--server", fed.layout.fed_address
    )
    wait_for(lambda: connected(fed) == {"site-1", "site-2"}, "site-1 to be back")


def test_server_restart_and_sigterm(
    federation_factory: Callable[..., Federation],
    spawn: Callable[..., subprocess.Popen[bytes]],
) -> None:
    fed = federation_factory(2, heartbeat_timeout_s=3)
    site_logs = [kit / "log.txt" for kit in fed.layout.site_kits.values()]
    server = [
        "server",
        "--kit",
        str(fed.layout.server_kit),
        "--host",
        "127.0.0.1",
        "--heartbeat-timeout",
        "3",
    ]

    # SIGTERM the POC's server; the sites are told and keep running.
    os.kill(fed.pid("server1"), signal.SIGTERM)
    wait_for(
        lambda: not poc.status(fed.workspace)["processes"]["server1"]["running"],
        "the server to exit",
    )
    for log in site_logs:
        wait_for(going_away(log, 1), f"{log} to say the server is going away")
    assert poc.status(fed.workspace)["processes"]["site-1"]["running"]
    assert poc.status(fed.workspace)["processes"]["site-2"]["running"]

    # Start it again on the same ports (the kit's): the sites come back by themselves.
    proc = spawn(*server)
    wait_for(lambda: connected(fed) == {"site-1", "site-2"}, "the sites to reconnect")

    # SIGTERM on a server we started: exit code 0, sites told, and back again.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    for log in site_logs:
        wait_for(going_away(log, 2), f"{log} to say the server is going away")
    spawn(*server)
    wait_for(lambda: connected(fed) == {"site-1", "site-2"}, "the sites to reconnect again")
    assert poc.status(fed.workspace)["processes"]["site-1"]["running"]
    assert poc.status(fed.workspace)["processes"]["site-2"]["running"]
