"""With real provisioned kits: certificate SANs match the Service, and a kit that
went through a Kubernetes Secret (symlinks, mode 0440) starts real daemons
through deploy/entrypoint.sh, as the pods do. No cluster and no Docker needed.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.deploy import K8sOptions, read_prod_dir, write_manifests

provision_mod = pytest.importorskip("shoal.provision")
if not hasattr(provision_mod, "provision"):  # pragma: no cover - provisioning not landed
    pytest.skip("shoal.provision.provision not available", allow_module_level=True)

from cryptography import x509  # noqa: E402

from shoal.deploy.healthcheck import check  # noqa: E402
from shoal.poc import free_ports  # noqa: E402

from .conftest import provision_example  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
KUBECTL = shutil.which("kubectl")


def _render(path: Path) -> list[dict[str, Any]]:
    assert KUBECTL
    out = subprocess.run(
        [KUBECTL, "kustomize", str(path)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_server_certificate_names_the_service(tmp_path: Path) -> None:
    prod_dir = provision_example(tmp_path)
    prod = read_prod_dir(prod_dir)
    assert prod.server.namespace == "fl-infra"
    cert = x509.load_pem_x509_certificate((prod_dir / "server1/startup/server.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(sans.get_values_for_type(x509.DNSName))
    assert prod.server.service_host in dns
    assert "server1" in dns  # the TLS name sites check


@pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed")
def test_site_address_is_in_the_certificate(tmp_path: Path) -> None:
    prod_dir = provision_example(tmp_path)
    write_manifests(prod_dir, tmp_path / "k8s", K8sOptions())
    docs = _render(tmp_path / "k8s")
    cert = x509.load_pem_x509_certificate((prod_dir / "server1/startup/server.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(sans.get_values_for_type(x509.DNSName))
    sites = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] != "server1"]
    assert len(sites) == 2
    for dep in sites:
        env = {
            e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        host = env["SHOAL_SERVER_ADDRESS"].rsplit(":", 1)[0]
        assert host in dns


def _secret_volume(secret: dict[str, Any], mount: Path) -> Path:
    """Lay out a Secret as the kubelet does: files in a timestamped dir, symlinked, 0440."""
    data_dir = mount / "..2026_01_01_00_00_00.000000001"
    data_dir.mkdir(parents=True)
    for name, value in secret["data"].items():
        path = data_dir / name
        path.write_bytes(base64.b64decode(value))
        path.chmod(0o440)
        (mount / name).symlink_to(f"..data/{name}")
    (mount / "..data").symlink_to(data_dir.name)
    return mount


def _pod_env(tmp_path: Path, who: str, secret: dict[str, Any], **extra: str) -> dict[str, str]:
    source = tmp_path / who / "etc-shoal-kit"
    _secret_volume(secret, source / "startup")
    return {
        "PATH": os.environ["PATH"],
        "SHOAL_PYTHON": sys.executable,
        "SHOAL_KIT_SOURCE": str(source),
        "SHOAL_KIT_DIR": str(tmp_path / who / "run-kit"),
        "SHOAL_WORKSPACE_DIR": str(tmp_path / who / "workspace"),
        "HOME": str(tmp_path / who),
        # The tests may run as root; the pods never do (runAsNonRoot).
        "SHOAL_ALLOW_ROOT": "1",
        **extra,
    }


_LOGS: dict[int, Path] = {}


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["sh", str(ENTRYPOINT), *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    _LOGS[proc.pid] = log
    return proc


def _log_of(proc: subprocess.Popen[bytes]) -> str:
    return _LOGS[proc.pid].read_text(errors="replace")


def _wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"daemon exited with {proc.returncode}:\n{_log_of(proc)}")
        if check(port, timeout=1.0):
            return
        time.sleep(0.2)
    pytest.fail(f"health port {port} never reported SERVING")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)  # what the kubelet sends to PID 1
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("daemon ignored SIGTERM")


@pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed")
def test_pods_start_from_secret_mounted_kits(tmp_path: Path) -> None:
    fed, admin, health, site_health, metrics, site_metrics = free_ports(6)
    prod_dir = provision_example(tmp_path, fed, admin, health)
    write_manifests(
        prod_dir,
        tmp_path / "k8s",
        K8sOptions(site_health_port=site_health, secrets="generate", metrics_port=metrics),
    )
    docs = _render(tmp_path / "k8s")
    secrets = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "Secret"}
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}

    server_args = deployments["server1"]["spec"]["template"]["spec"]["containers"][0]["args"]
    server = _start(
        server_args, _pod_env(tmp_path, "server", secrets["fl-infra"]), tmp_path / "server.log"
    )
    site = None
    try:
        _wait_healthy(health, server)
        assert (tmp_path / "server" / "workspace" / "server_ready.json").is_file()
        container = deployments["site-1"]["spec"]["template"]["spec"]["containers"][0]
        # In the cluster this is the Service's DNS name; here the same server on loopback.
        env = _pod_env(
            tmp_path, "site-1", secrets["shoal-site-1"], SHOAL_SERVER_ADDRESS=f"127.0.0.1:{fed}"
        )
        # Each pod has an address of its own; on one host the site's metrics port differs.
        args = [str(site_metrics) if a == str(metrics) else a for a in container["args"]]
        site = _start(args, env, tmp_path / "site-1.log")
        _wait_healthy(site_health, site)
        # Health is up before the site dials; wait for the server to see it.
        deadline = time.monotonic() + 30
        while "site site-1 (org nvidia) connected" not in _log_of(server):
            assert time.monotonic() < deadline, _log_of(site)
            time.sleep(0.1)
        # What the pods' scrape annotations point Prometheus at answers.
        for port, name in (
            (metrics, "shoal_sites_connected"),
            (site_metrics, "shoal_site_connected"),
        ):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
                assert f"\n{name} " in reply.read().decode()
    finally:
        codes = [_stop(p) for p in (site, server) if p is not None]
    assert codes == [0] * len(codes), _log_of(server)
