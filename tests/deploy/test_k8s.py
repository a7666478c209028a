"""`shoal deploy k8s`: the kustomize tree renders, validates offline and keeps keys apart."""

from __future__ import annotations

import base64
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.cli.app import EXIT_USAGE, main
from shoal.deploy import Exposure, K8sOptions, read_prod_dir, write_manifests
from shoal.errors import ConfigError, KitError

from .conftest import MakeProd

#: A Kubernetes version kubernetes-validate ships schemas for (1.25 .. 1.37).
K8S_VERSION = "1.30.0"

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed")


def render(path: Path) -> list[dict[str, Any]]:
    assert KUBECTL
    result = subprocess.run(
        [KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, namespace: str | None = None) -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if namespace in (None, d["metadata"].get("namespace"))]
    assert len(found) == 1, (kind, namespace, found)
    return found[0]


# -- reading kits ---------------------------------------------------------------------


def test_reads_kubernetes_keys(make_prod: MakeProd) -> None:
    prod = read_prod_dir(make_prod())
    assert prod.project == "example_project"
    assert (prod.server.namespace, prod.server.service) == ("fl-infra", "fl-server")
    assert prod.server.health_port == 8004
    assert prod.server.service_host == "fl-server.fl-infra.svc.cluster.local"
    assert [(s.name, s.namespace) for s in prod.sites] == [
        ("site-1", "fl-site-1"),
        ("site-2", "fl-site-2"),
    ]
    assert [a.name for a in prod.admins] == ["admin@nvidia.com"]


def test_defaults_without_kubernetes_keys(make_prod: MakeProd) -> None:
    prod = read_prod_dir(make_prod(kubernetes=False, server="Server_1", sites=("Site_A",)))
    assert prod.server.namespace == "shoal-infra"
    assert prod.server.service == "server-1"
    assert prod.server.health_port == 8004  # admin_port + 1
    assert prod.sites[0].namespace == "shoal-site-a"


def test_gpus_from_resources_json(make_prod: MakeProd) -> None:
    prod = read_prod_dir(make_prod(gpus={"site-2": 2}))
    assert {s.name: s.gpus for s in prod.sites} == {"site-1": 0, "site-2": 2}


def test_refuses_folder_without_server(make_prod: MakeProd) -> None:
    prod = make_prod()
    shutil.rmtree(prod / "server1")
    with pytest.raises(ConfigError, match="exactly one server"):
        read_prod_dir(prod)


def test_refuses_shared_namespace(make_prod: MakeProd) -> None:
    prod = make_prod()
    cfg = prod / "site-2" / "startup" / "fed_client.json"
    cfg.write_text(cfg.read_text().replace("fl-site-2", "fl-site-1"))
    with pytest.raises(ConfigError, match="share namespace"):
        read_prod_dir(prod)


def test_refuses_bad_namespace(make_prod: MakeProd) -> None:
    prod = make_prod()
    cfg = prod / "site-1" / "startup" / "fed_client.json"
    cfg.write_text(cfg.read_text().replace("fl-site-1", "Not_A_Label"))
    with pytest.raises(KitError, match="DNS label"):
        read_prod_dir(prod)


# -- the tree ---------------------------------------------------------------------------


def test_layout_and_private_files(make_prod: MakeProd, tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    files = write_manifests(make_prod(), out, K8sOptions(secrets="generate"))
    rel = {p.relative_to(out).as_posix() for p in files}
    for expected in (
        "kustomization.yaml",
        "base/server/kustomization.yaml",
        "base/client/kustomization.yaml",
        "overlays/server1/kustomization.yaml",
        "overlays/site-1/kustomization.yaml",
        "overlays/site-2/kustomization.yaml",
        "overlays/site-1/startup/client.key",
    ):
        assert expected in rel
    assert not any("admin@" in r for r in rel), "the admin kit never goes to the cluster"
    top = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert top["resources"] == ["overlays/server1", "overlays/site-1", "overlays/site-2"]
    for key in out.glob("overlays/*/startup/*"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700


def test_rerun_replaces_but_never_clobbers_other_folders(
    make_prod: MakeProd, tmp_path: Path
) -> None:
    prod = make_prod()
    out = tmp_path / "k8s"
    write_manifests(prod, out)
    (out / "overlays" / "stale").mkdir()
    write_manifests(prod, out)
    assert not (out / "overlays" / "stale").exists()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not empty"):
        write_manifests(prod, other)
    assert (other / "notes.txt").read_text() == "keep"


def test_unknown_gpu_site_is_refused(make_prod: MakeProd, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown sites"):
        write_manifests(make_prod(), tmp_path / "k8s", K8sOptions(gpus={"site-9": 1}))


DIGEST = "sha256:" + "ab" * 32

VARIANTS = {
    "default": K8sOptions(),
    "bucket-lb-gpu": K8sOptions(
        image="europe-docker.pkg.dev/p/r/shoal",
        tag="1.2.3",
        storage_class="standard-rwo",
        bucket="shoal-workspace-1a2b",
        fed=Exposure(type="LoadBalancer", source_ranges=("203.0.113.0/24",), ip="203.0.113.7"),
        admin=Exposure(type="LoadBalancer", source_ranges=("198.51.100.4/32",), internal=True),
        gpus={"site-1": 1},
        secrets="generate",
    ),
    "everything": K8sOptions(
        image="reg.example/shoal",
        digest=DIGEST,
        gpu_digest="sha256:" + "cd" * 32,
        image_pull_secrets=("regcred",),
        storage_class="shoal-retain",
        retain_provisioner="pd.csi.storage.gke.io",
        bucket="acme-fl-{participant}",
        server_address="fl.example.org:443",
        site_server_addresses={"site-2": "10.20.0.5:8002"},
        gpus={"site-2": 2},
        gpu_node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
        init="tini",
        service_monitor=True,
    ),
    "no-metrics": K8sOptions(metrics_port=None, bucket="my-bucket"),
}

#: Kinds of the Prometheus Operator's CRDs: kubernetes-validate has no schema
#: for them; test_service_monitor checks their shape.
CRD_KINDS = {"ServiceMonitor"}


@needs_kubectl
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_renders_and_validates_strict(make_prod: MakeProd, tmp_path: Path, variant: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    out = tmp_path / "k8s"
    write_manifests(make_prod(), out, VARIANTS[variant])
    roots = [out, *sorted((out / "overlays").iterdir())]
    for root in roots:
        docs = render(root)
        assert docs, root
        for doc in docs:
            if doc["kind"] not in CRD_KINDS:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    everything = render(out)
    namespaces = {d["metadata"]["name"] for d in by_kind(everything, "Namespace")}
    assert namespaces == {"fl-infra", "fl-site-1", "fl-site-2"}
    assert len(by_kind(everything, "Deployment")) == 3


@needs_kubectl
def test_keys_stay_in_their_own_namespace(make_prod: MakeProd, tmp_path: Path) -> None:
    prod = make_prod()
    out = tmp_path / "k8s"
    write_manifests(prod, out, K8sOptions(secrets="generate"))
    docs = render(out)
    for cm in by_kind(docs, "ConfigMap"):
        for name, value in (cm.get("data") or {}).items():
            assert not name.endswith(".key")
            assert "PRIVATE KEY" not in value, f"private key in ConfigMap {cm['metadata']}"
        assert not cm.get("binaryData")
    owners = {"fl-infra": "server1", "fl-site-1": "site-1", "fl-site-2": "site-2"}
    secrets = by_kind(docs, "Secret")
    assert sorted(s["metadata"]["namespace"] for s in secrets) == sorted(owners)
    for secret in secrets:
        participant = owners[secret["metadata"]["namespace"]]
        startup = prod / participant / "startup"
        expected = {p.name: p.read_bytes() for p in startup.iterdir()}
        got = {k: base64.b64decode(v) for k, v in secret["data"].items()}
        assert got == expected, (
            f"Secret in {secret['metadata']['namespace']} is not {participant}'s kit"
        )
    # Nothing else anywhere carries a key.
    for doc in docs:
        if doc["kind"] != "Secret":
            assert "PRIVATE KEY" not in yaml.safe_dump(doc)


@needs_kubectl
def test_server_deployment_and_service(make_prod: MakeProd, tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    write_manifests(make_prod(), out, K8sOptions(image="reg/shoal", tag="9.9.9"))
    docs = render(out / "overlays" / "server1")
    dep = one(docs, "Deployment")
    assert dep["metadata"]["namespace"] == "fl-infra"
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["image"] == "reg/shoal:9.9.9"
    assert container["args"] == ["server", "--metrics-port", "9090", "--metrics-host", "0.0.0.0"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["grpc"]["port"] == 8004
    startup_vol = next(v for v in pod["volumes"] if v["name"] == "startup")
    assert startup_vol["secret"]["secretName"] == "shoal-startup"  # made out of band
    sa = one(docs, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    assert set(services) == {"fl-server", "fl-server-admin"}
    for name, port in (("fl-server", {"fed": 8002}), ("fl-server-admin", {"admin": 8003})):
        svc = services[name]
        assert svc["spec"]["type"] == "ClusterIP"
        assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == port
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= pod_labels.items()
    one(docs, "PersistentVolumeClaim")


@needs_kubectl
def test_site_deployment(make_prod: MakeProd, tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    write_manifests(make_prod(gpus={"site-2": 2}), out, K8sOptions(tag="0.1.0"))
    docs = render(out)
    deployments = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    for site, gpus in (("site-1", 0), ("site-2", 2)):
        dep = deployments[site]
        assert dep["metadata"]["namespace"] == f"fl-{site}"
        assert dep["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == site
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["SHOAL_SERVER_ADDRESS"] == "fl-server.fl-infra.svc.cluster.local:8002"
        assert container["args"] == [
            "client",
            "--health-port",
            "8004",
            "--metrics-port",
            "9090",
            "--metrics-host",
            "0.0.0.0",
        ]
        assert container["readinessProbe"]["grpc"] == {"port": 8004, "service": "shoal.v1.Site"}
        limits = container["resources"]["limits"]
        if gpus:
            assert limits["nvidia.com/gpu"] == gpus
            assert container["image"] == "shoal:0.1.0-cuda"
            tolerations = dep["spec"]["template"]["spec"]["tolerations"]
            assert tolerations[0]["key"] == "nvidia.com/gpu"
        else:
            assert "nvidia.com/gpu" not in limits
            assert container["image"] == "shoal:0.1.0"


@needs_kubectl
def test_pods_are_scraped_by_annotation_or_service_monitor(
    make_prod: MakeProd, tmp_path: Path
) -> None:
    out = tmp_path / "k8s"
    write_manifests(make_prod(), out, K8sOptions(metrics_port=9100, service_monitor=True))
    for overlay in ("server1", "site-1"):
        docs = render(out / "overlays" / overlay)
        dep = one(docs, "Deployment")
        template = dep["spec"]["template"]
        assert template["metadata"]["annotations"] == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": "9100",
            "prometheus.io/path": "/metrics",
        }
        (container,) = template["spec"]["containers"]
        args = container["args"]
        assert args[args.index("--metrics-port") + 1] == "9100"
        assert args[args.index("--metrics-host") + 1] == "0.0.0.0"  # the pod's address
        assert {"name": "metrics", "containerPort": 9100, "protocol": "TCP"} in container["ports"]
        # The NetworkPolicy admits the scrape port.
        policy = one(docs, "NetworkPolicy")
        admitted = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
        assert 9100 in admitted
        # The ServiceMonitor selects the metrics Service, which selects the pod.
        monitor = one(docs, "ServiceMonitor")
        service = next(
            s for s in by_kind(docs, "Service") if s["metadata"]["name"] == "shoal-metrics"
        )
        assert (
            monitor["spec"]["selector"]["matchLabels"].items()
            <= service["metadata"]["labels"].items()
        )
        assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
        assert monitor["spec"]["endpoints"] == [
            {"port": "metrics", "path": "/metrics", "interval": "30s"}
        ]
        assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    # Without metrics: no port, no annotation, a site admits nothing.
    write_manifests(make_prod(), out, K8sOptions(metrics_port=None))
    site = render(out / "overlays" / "site-1")
    template = one(site, "Deployment")["spec"]["template"]
    assert "annotations" not in template["metadata"]
    assert "--metrics-port" not in template["spec"]["containers"][0]["args"]
    assert one(site, "NetworkPolicy")["spec"]["ingress"] == []
    assert not by_kind(site, "ServiceMonitor")


def test_metrics_port_clash_is_refused(make_prod: MakeProd, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="already a daemon port"):
        write_manifests(make_prod(), tmp_path / "k8s", K8sOptions(metrics_port=8004))
    with pytest.raises(ConfigError, match="needs metrics"):
        write_manifests(
            make_prod(), tmp_path / "k8s", K8sOptions(metrics_port=None, service_monitor=True)
        )


@needs_kubectl
def test_bucket_variant(make_prod: MakeProd, tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    write_manifests(make_prod(), out, K8sOptions(bucket="my-bucket"))
    docs = render(out)
    pvs = {pv["spec"]["claimRef"]["namespace"]: pv for pv in by_kind(docs, "PersistentVolume")}
    assert set(pvs) == {"fl-infra", "fl-site-1", "fl-site-2"}
    pv = pvs["fl-site-1"]
    assert "namespace" not in pv["metadata"]
    assert pv["spec"]["csi"] == {
        "driver": "gcsfuse.csi.storage.gke.io",
        "volumeHandle": "my-bucket",
    }
    assert "only-dir=site-1" in pv["spec"]["mountOptions"]
    # Folder renames are never needed (item 1), so the refusing default stays.
    assert not any(opt.startswith("rename-dir-limit") for opt in pv["spec"]["mountOptions"])
    pvc = one(docs, "PersistentVolumeClaim", "fl-site-1")
    assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
    assert pvc["spec"]["storageClassName"] == ""
    for dep in by_kind(docs, "Deployment"):
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        assert annotations["gke-gcsfuse/volumes"] == "true"
    # The server's database is on a disk of its own, never on the bucket.
    server = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "server1")
    assert_database_on_a_disk(docs, server, bucket_pv=pvs["fl-infra"]["metadata"]["name"])
    assert server["spec"]["replicas"] == 1 and server["spec"]["strategy"] == {"type": "Recreate"}


def assert_database_on_a_disk(
    docs: list[dict[str, Any]], server: dict[str, Any], *, bucket_pv: str | None
) -> None:
    (container,) = server["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    state_dir = args[args.index("--state-dir") + 1]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == state_dir)
    volume = next(
        v for v in server["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    )
    claim = volume["persistentVolumeClaim"]["claimName"]
    workspace = next(m for m in container["volumeMounts"] if m["name"] == "workspace")
    assert not state_dir.startswith(workspace["mountPath"])
    namespace = server["metadata"]["namespace"]
    pvc = next(
        p
        for p in by_kind(docs, "PersistentVolumeClaim")
        if p["metadata"]["name"] == claim and p["metadata"]["namespace"] == namespace
    )
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["spec"].get("volumeName") in (None, "") and pvc["spec"].get("storageClassName") != ""
    assert pvc["spec"].get("volumeName") != bucket_pv


@needs_kubectl
def test_bucket_for_sites_only(make_prod: MakeProd, tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    write_manifests(make_prod(), out, K8sOptions(bucket="my-bucket", bucket_for="sites"))
    docs = render(out)
    pvs = {pv["spec"]["claimRef"]["namespace"] for pv in by_kind(docs, "PersistentVolume")}
    assert pvs == {"fl-site-1", "fl-site-2"}
    server = one(render(out / "overlays" / "server1"), "Deployment")
    assert "--state-dir" not in server["spec"]["template"]["spec"]["containers"][0]["args"]
    # No gcsfuse sidecar for the server (its scrape annotations only).
    assert "gke-gcsfuse/volumes" not in server["spec"]["template"]["metadata"]["annotations"]
    assert "fl-infra" not in (out / "gcp-iam.sh").read_text()


# -- CLI --------------------------------------------------------------------------------


def test_cli_writes_tree(
    make_prod: MakeProd, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prod = make_prod()
    out = tmp_path / "out"
    code = main(["deploy", "k8s", "--prod-dir", str(prod), "-o", str(out), "--gpu", "site-1=1"])
    assert code == 0
    assert (out / "kustomization.yaml").is_file()
    printed = capsys.readouterr().out
    assert "fl-server.fl-infra.svc.cluster.local" in printed
    assert f"kubectl apply -k {out}" in printed


def test_cli_default_out_is_beside_prod_dir(make_prod: MakeProd) -> None:
    prod = make_prod()
    assert main(["deploy", "k8s", "--prod-dir", str(prod)]) == 0
    assert (prod.parent / "k8s" / "prod_00" / "kustomization.yaml").is_file()


@pytest.mark.parametrize("bad", ["site-1", "site-1=x", "=1"])
def test_cli_bad_gpu_is_usage_error(make_prod: MakeProd, tmp_path: Path, bad: str) -> None:
    args = [
        "deploy",
        "k8s",
        "--prod-dir",
        str(make_prod()),
        "-o",
        str(tmp_path / "o"),
        "--gpu",
        bad,
    ]
    assert main(args) == EXIT_USAGE


def test_cli_missing_prod_dir_is_usage_error(tmp_path: Path) -> None:
    assert main(["deploy", "k8s", "--prod-dir", str(tmp_path / "nope")]) == EXIT_USAGE
