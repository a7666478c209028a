"""Issue 3: every wrong party is refused, says why in a log, and changes nothing.

One POC federation (server1, site-1, site-2: real daemons from real kits,
mutual TLS on 127.0.0.1) serves every test of this module; after each
refusal the federation must look exactly as before.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from shoal import poc
from shoal._proto import shoal_pb2 as pb
from shoal._proto import shoal_pb2_grpc as pb_grpc
from shoal.provision import Kit, load_kit, provision
from shoal.transport import TLSConfig, open_channel

pytestmark = [
    # poc starts daemons detached: their Popen objects are dropped while they run.
    pytest.mark.filterwarnings(r"ignore:subprocess \d+ is still running:ResourceWarning"),
]


class Fed:
    def __init__(self, workspace: Path, layout: poc.PocLayout) -> None:
        self.workspace = workspace
        self.layout = layout

    @property
    def server_out(self) -> Path:
        """The server's console (gRPC's own handshake errors land here)."""
        return self.layout.run_dir / "logs" / "server1.out"

    @property
    def server_log(self) -> Path:
        return self.layout.server_kit / "log.txt"

    def site_kit(self, name: str = "site-1") -> Kit:
        return load_kit(self.layout.site_kits[name])

    def sites(self) -> dict[str, str]:
        """Connected site -> when it connected (a replaced session would change it)."""
        with poc.admin_session(self.workspace) as s:
            st = s.check_status()
        return {x["name"]: x["connected_since"] for x in st["sites"] if x["connected"]}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    ws = tmp_path_factory.mktemp("refusals")
    poc.prepare(ws, num_sites=2)
    try:
        layout = poc.start(ws, timeout=120)
        yield Fed(ws, layout)
    finally:
        poc.stop(ws)


@pytest.fixture
def unchanged(fed: Fed) -> Iterator[None]:
    """The federation's connected sites are the same after the test."""
    before = fed.sites()
    assert set(before) == {"site-1", "site-2"}
    yield
    assert fed.sites() == before


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def log_has(path: Path, text: str, *, after: int = 0) -> bool:
    """``text`` appears in ``path`` past byte offset ``after``."""
    try:
        with open(path, "rb") as f:
            f.seek(after)
            return text in f.read().decode(errors="replace")
    except FileNotFoundError:
        return False


def size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _beat(channel: grpc.Channel) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        pb_grpc.FleetStub(channel).Beat(pb.Heartbeat(session_id="x"), timeout=30)
    return info.value


# -- refused in the TLS handshake -------------------------------------------------


@pytest.mark.usefixtures("unchanged")
def test_no_client_certificate(fed: Fed) -> None:
    mark = size(fed.server_out)
    creds = grpc.ssl_channel_credentials(root_certificates=fed.site_kit().tls.ca_pem)
    options = [("grpc.ssl_target_name_override", "server1")]
    with grpc.secure_channel(fed.layout.fed_address, creds, options=options) as ch:
        err = _beat(ch)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    wait_for(
        lambda: log_has(fed.server_out, "PEER_DID_NOT_RETURN_A_CERTIFICATE", after=mark),
        "the server to log the missing client certificate",
    )


@pytest.mark.usefixtures("unchanged")
def test_certificate_from_another_ca(
    fed: Fed, tmp_path: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    other = poc.prepare(tmp_path / "other", num_sites=1)
    stranger = load_kit(other.site_kits["site-1"])
    # A stranger that trusts our CA: only the server's own check can refuse it.
    mark = size(fed.server_out)
    tls = TLSConfig(
        ca_pem=fed.site_kit().tls.ca_pem,
        cert_pem=stranger.tls.cert_pem,
        key_pem=stranger.tls.key_pem,
    )
    with open_channel(fed.layout.fed_address, tls, server_name="server1") as ch:
        assert _beat(ch).code() == grpc.StatusCode.UNAVAILABLE
    wait_for(
        lambda: log_has(fed.server_out, "CERTIFICATE_VERIFY_FAILED", after=mark),
        "the server to log the unverifiable client certificate",
    )
    # The other project's site daemon, run for real: it never connects, and says why.
    proc = spawn(
        "client", "--kit", str(other.site_kits["site-1"]), "--server", fed.layout.fed_address
    )
    wait_for(
        lambda: log_has(other.site_kits["site-1"] / "log.txt", "CERTIFICATE_VERIFY_FAILED"),
        "the stranger site to log the failed handshake",
    )
    assert proc.poll() is None  # it keeps retrying; the federation is unaffected


# -- refused by identity ----------------------------------------------------------------


@pytest.mark.usefixtures("unchanged")
def test_site_certificate_on_the_admin_port(fed: Fed) -> None:
    mark = size(fed.server_log)
    with (
        open_channel(fed.layout.admin_address, fed.site_kit().tls, server_name="server1") as ch,
        pytest.raises(grpc.RpcError) as info,
    ):
        pb_grpc.AdminStub(ch).Call(pb.AdminRequest(command="check_status"), timeout=30)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert "admins only" in (info.value.details() or "")  # type: ignore[attr-defined]
    wait_for(
        lambda: (
            log_has(fed.server_log, "refused site-1", after=mark)
            and log_has(fed.server_log, "a client certificate on the admin port", after=mark)
        ),
        "the server to log the site on the admin port",
    )


@pytest.mark.usefixtures("unchanged")
def test_admin_certificate_on_the_site_port(fed: Fed) -> None:
    admin = load_kit(fed.layout.admin_kit)
    mark = size(fed.server_log)
    with open_channel(fed.layout.fed_address, admin.tls, server_name="server1") as ch:
        call = pb_grpc.FleetStub(ch).Connect(pb.Hello(site="admin@nvidia.com"), timeout=30)
        with pytest.raises(grpc.RpcError) as info:
            next(iter(call))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    wait_for(
        lambda: log_has(fed.server_log, "an admin certificate on the site port", after=mark),
        "the server to log the admin on the site port",
    )


@pytest.mark.usefixtures("unchanged")
def test_site_registering_under_another_name(fed: Fed) -> None:
    mark = size(fed.server_log)
    with open_channel(fed.layout.fed_address, fed.site_kit().tls, server_name="server1") as ch:
        call = pb_grpc.FleetStub(ch).Connect(pb.Hello(site="site-2"), timeout=30)
        with pytest.raises(grpc.RpcError) as info:
            next(iter(call))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert "cannot register as 'site-2'" in (info.value.details() or "")  # type: ignore[attr-defined]
    wait_for(
        lambda: log_has(
            fed.server_log, "certificate of site-1 tried to register as 'site-2'", after=mark
        ),
        "the server to log the impersonation",
    )


# -- refused by the client ------------------------------------------------------------------


def test_tampered_kit_does_not_start(fed: Fed, tmp_path: Path) -> None:
    kit = tmp_path / "site-1"
    shutil.copytree(fed.layout.site_kits["site-1"] / "startup", kit / "startup")
    shutil.copytree(fed.layout.site_kits["site-1"] / "local", kit / "local")
    config = kit / "startup" / "fed_client.json"
    config.write_text(config.read_text().replace('"org": "nvidia"', '"org": "evil"'))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "shoal",
            "client",
            "--kit",
            str(kit),
            "--server",
            fed.layout.fed_address,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "fed_client.json" in done.stderr
    assert "changed since provisioning" in done.stderr


@pytest.mark.usefixtures("unchanged")
def test_server_with_another_name(fed: Fed, spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    # Same project, same CA, but this provision run names the server server2:
    # its site-1 must refuse server1's certificate even though the CA matches.
    project = fed.workspace / "project.yml"
    renamed = fed.workspace / "project-server2.yml"
    renamed.write_text(project.read_text().replace("name: server1", "name: server2"))
    kit = provision(renamed, fed.workspace / "kits").kits["site-1"]
    assert load_kit(kit).tls.ca_pem == fed.site_kit().tls.ca_pem
    proc = spawn("client", "--kit", str(kit), "--server", fed.layout.fed_address)
    wait_for(
        lambda: log_has(kit / "log.txt", "Hostname Verification Check failed"),
        "the site to log that the server's certificate does not name server2",
    )
    assert proc.poll() is None  # it keeps retrying
    # And the same through the transport API.
    with open_channel(fed.layout.fed_address, fed.site_kit().tls, server_name="server2") as ch:
        err = _beat(ch)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "Hostname Verification" in (err.details() or "")
