"""The manifests' properties an operator signs off on (issue 19, items 3 and 5-9),
asserted on the rendered objects (kubectl kustomize), not on the text."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from shoal.cli.app import EXIT_USAGE, main
from shoal.deploy import Exposure, K8sOptions, write_manifests
from shoal.errors import ConfigError

from .conftest import MakeProd
from .test_k8s import DIGEST, by_kind, needs_kubectl, one, render

pytestmark = needs_kubectl


def deployments(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}


def container(dep: dict[str, Any]) -> dict[str, Any]:
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return c


def env(dep: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(dep)["env"]}


# -- item 7: no private keys unless asked ---------------------------------------------


def test_no_key_material_by_default(make_prod: MakeProd, tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    write_manifests(make_prod(), out)
    for path in out.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert "PRIVATE KEY" not in text, path
            assert not path.name.endswith(".key"), path
    docs = render(out)
    assert by_kind(docs, "Secret") == []
    for dep in by_kind(docs, "Deployment"):
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        assert volumes["startup"]["secret"]["secretName"] == "shoal-startup"
    # secrets.sh makes exactly those Secrets, one per namespace, from the kits' files.
    script = (out / "secrets.sh").read_text()
    for ns in ("fl-infra", "fl-site-1", "fl-site-2"):
        assert f"kubectl -n {ns} create secret generic shoal-startup" in script
    assert "site-1/startup/client.key" in script and "admin@" not in script


def test_generated_secrets_only_on_request(make_prod: MakeProd, tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    write_manifests(make_prod(), out, K8sOptions(secrets="generate"))
    secrets = by_kind(render(out), "Secret")
    assert len(secrets) == 3
    assert not (out / "secrets.sh").exists()
    for key in out.glob("overlays/*/startup/*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


# -- item 6: the admin port is not public ---------------------------------------------


def test_admin_service_is_separate_and_restricted(make_prod: MakeProd, tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    options = K8sOptions(
        fed=Exposure(type="LoadBalancer", source_ranges=("203.0.113.0/24",), ip="203.0.113.9"),
        admin=Exposure(type="LoadBalancer", source_ranges=("198.51.100.7/32",), internal=True),
    )
    write_manifests(make_prod(), out, options)
    services = {s["metadata"]["name"]: s for s in by_kind(render(out), "Service")}
    fed, admin = services["fl-server"], services["fl-server-admin"]
    assert [p["name"] for p in fed["spec"]["ports"]] == ["fed"]
    assert [p["name"] for p in admin["spec"]["ports"]] == ["admin"]
    assert fed["spec"]["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
    assert fed["spec"]["loadBalancerIP"] == "203.0.113.9"
    assert "annotations" not in fed["metadata"]
    assert admin["spec"]["loadBalancerSourceRanges"] == ["198.51.100.7/32"]
    assert admin["metadata"]["annotations"]["networking.gke.io/load-balancer-type"] == "Internal"


def test_public_site_port_leaves_admin_internal(make_prod: MakeProd, tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    write_manifests(make_prod(), out, K8sOptions(fed=Exposure(type="LoadBalancer")))
    services = {s["metadata"]["name"]: s for s in by_kind(render(out), "Service")}
    assert services["fl-server"]["spec"]["type"] == "LoadBalancer"
    assert services["fl-server-admin"]["spec"]["type"] == "ClusterIP"


@pytest.mark.parametrize(
    "exposure",
    [
        Exposure(source_ranges=("10.0.0.0/8",)),  # ranges on a ClusterIP do nothing: refuse
        Exposure(type="LoadBalancer", source_ranges=("10.0.0.1/8",)),  # host bits set
        Exposure(type="LoadBalancer", ip="not-an-ip"),
    ],
)
def test_bad_exposure_is_refused(make_prod: MakeProd, tmp_path: Path, exposure: Exposure) -> None:
    with pytest.raises(ConfigError):
        write_manifests(make_prod(), tmp_path / "k8s", K8sOptions(admin=exposure))


# -- item 5: sites elsewhere ------------------------------------------------------------


def test_server_address_for_sites_elsewhere(make_prod: MakeProd, tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    options = K8sOptions(
        server_address="fl.example.org:443", site_server_addresses={"site-2": "192.0.2.10:8002"}
    )
    write_manifests(make_prod(), out, options)
    deps = deployments(render(out))
    assert env(deps["site-1"])["SHOAL_SERVER_ADDRESS"] == "fl.example.org:443"
    assert env(deps["site-2"])["SHOAL_SERVER_ADDRESS"] == "192.0.2.10:8002"
    # One site's overlay deploys alone, in its own cluster.
    alone = deployments(render(out / "overlays" / "site-2"))
    assert set(alone) == {"site-2"}


@pytest.mark.parametrize("bad", ["fl.example.org", "fl.example.org:0", "http://x:1", ":8002"])
def test_bad_server_address_is_refused(make_prod: MakeProd, tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        write_manifests(make_prod(), tmp_path / "k8s", K8sOptions(server_address=bad))


# -- item 3: GPU sites ------------------------------------------------------------------


def test_gpu_site_from_resources_json(make_prod: MakeProd, tmp_path: Path) -> None:
    prod = make_prod(gpus={"site-2": 2})
    res = prod / "site-2" / "local" / "resources.json"
    res.write_text('{"format": 1, "num_gpus": 2, "gpu_type": "nvidia-l4"}')
    out = tmp_path / "k8s"
    write_manifests(prod, out, K8sOptions(tag="0.1.0"))
    deps = deployments(render(out))
    gpu, cpu = deps["site-2"], deps["site-1"]
    assert container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container(gpu)["image"] == "shoal:0.1.0-cuda"
    pod = gpu["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert "/usr/local/nvidia/lib64" in env(gpu)["LD_LIBRARY_PATH"].split(":")
    assert (
        "LD_LIBRARY_PATH" not in env(cpu) and "nodeSelector" not in cpu["spec"]["template"]["spec"]
    )


def test_gpu_node_selector_option_wins(make_prod: MakeProd, tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    options = K8sOptions(gpus={"site-1": 1}, gpu_node_selector={"nvidia.com/gpu.present": "true"})
    write_manifests(make_prod(), out, options)
    pod = deployments(render(out))["site-1"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


# -- item 9 ---------------------------------------------------------------------------------


def test_pdbs_select_each_participants_pod(make_prod: MakeProd, tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    write_manifests(make_prod(), out)
    docs = render(out)
    pdbs = {p["metadata"]["namespace"]: p for p in by_kind(docs, "PodDisruptionBudget")}
    assert set(pdbs) == {"fl-infra", "fl-site-1", "fl-site-2"}
    for dep in by_kind(docs, "Deployment"):
        budget = pdbs[dep["metadata"]["namespace"]]
        assert budget["spec"]["minAvailable"] == 1
        assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"]
    write_manifests(make_prod(), out, K8sOptions(pdb=False))
    assert by_kind(render(out), "PodDisruptionBudget") == []


def test_image_by_digest_and_pull_policy(make_prod: MakeProd, tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    write_manifests(make_prod(), out, K8sOptions(image="reg/shoal", tag="1.0"))
    for dep in by_kind(render(out), "Deployment"):
        assert container(dep)["imagePullPolicy"] == "Always"  # a tag can move
    options = K8sOptions(image="reg/shoal", digest=DIGEST, image_pull_secrets=("regcred",))
    write_manifests(make_prod(), out, options)
    for dep in by_kind(render(out), "Deployment"):
        assert container(dep)["image"] == f"reg/shoal@{DIGEST}"
        assert container(dep)["imagePullPolicy"] == "IfNotPresent"
        assert dep["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]


@pytest.mark.parametrize(
    "options",
    [
        K8sOptions(pull_policy="IfNotPresent"),  # a mutable tag
        K8sOptions(pull_policy="IfNotPresent", digest=DIGEST, gpus={"site-1": 1}),  # GPU by tag
        K8sOptions(digest="sha256:short"),
        K8sOptions(image="reg/shoal:1.0"),
        K8sOptions(image="reg/shoal@" + DIGEST),
    ],
)
def test_mutable_or_malformed_image_is_refused(
    make_prod: MakeProd, tmp_path: Path, options: K8sOptions
) -> None:
    with pytest.raises(ConfigError):
        write_manifests(make_prod(), tmp_path / "k8s", options)


def test_home_writable_and_pid1(make_prod: MakeProd, tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    write_manifests(make_prod(), out)
    for dep in by_kind(render(out), "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        c = container(dep)
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        home = env(dep)["HOME"]
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == home)
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert "emptyDir" in volume
        # The pause process is PID 1 and reaps what job code orphans.
        assert pod["shareProcessNamespace"] is True
        assert "command" not in c
    write_manifests(make_prod(), out, K8sOptions(init="tini"))
    for dep in by_kind(render(out), "Deployment"):
        assert container(dep)["command"][:2] == ["tini", "--"]
        assert "shareProcessNamespace" not in dep["spec"]["template"]["spec"]


def test_retain_storage_class(make_prod: MakeProd, tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    options = K8sOptions(retain_provisioner="pd.csi.storage.gke.io")
    write_manifests(make_prod(), out, options)
    docs = render(out)
    sc = one(docs, "StorageClass")
    assert sc["reclaimPolicy"] == "Retain"
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer"
    for claim in by_kind(docs, "PersistentVolumeClaim"):
        assert claim["spec"]["storageClassName"] == sc["metadata"]["name"]


# -- item 8: per-site bucket isolation --------------------------------------------------


def test_bucket_per_participant_and_its_iam(make_prod: MakeProd, tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    write_manifests(make_prod(), out, K8sOptions(bucket="acme-fl-{participant}"))
    pvs = {
        pv["spec"]["claimRef"]["namespace"]: pv for pv in by_kind(render(out), "PersistentVolume")
    }
    assert pvs["fl-site-1"]["spec"]["csi"]["volumeHandle"] == "acme-fl-site-1"
    assert not any(o.startswith("only-dir") for o in pvs["fl-site-1"]["spec"]["mountOptions"])
    lines = [ln for ln in (out / "gcp-iam.sh").read_text().splitlines() if "add-iam" in ln]
    assert len(lines) == 3
    for ns, bucket in (
        ("fl-infra", "acme-fl-server1"),
        ("fl-site-1", "acme-fl-site-1"),
        ("fl-site-2", "acme-fl-site-2"),
    ):
        (line,) = [ln for ln in lines if f"/ns/{ns}/sa/shoal" in ln]
        assert f"gs://{bucket} " in line and "roles/storage.objectUser" in line


def test_shared_bucket_binds_each_folder_never_the_bucket(
    make_prod: MakeProd, tmp_path: Path
) -> None:
    out = tmp_path / "k8s"
    write_manifests(make_prod(), out, K8sOptions(bucket="acme-fl"))
    script = (out / "gcp-iam.sh").read_text()
    assert "buckets add-iam-policy-binding" not in script
    bindings = [ln for ln in script.splitlines() if "managed-folders add-iam-policy-binding" in ln]
    for ns, folder in (("fl-site-1", "site-1"), ("fl-site-2", "site-2")):
        (line,) = [ln for ln in bindings if f"/ns/{ns}/sa/shoal" in ln]
        assert f"gs://acme-fl/{folder}/ " in line


# -- CLI --------------------------------------------------------------------------------


def test_cli_options_reach_the_manifests(
    make_prod: MakeProd, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = ["deploy", "k8s", "--prod-dir", str(make_prod()), "-o", str(out)]
    args += ["--admin-service-type", "LoadBalancer", "--admin-source-range", "192.0.2.0/24"]
    args += ["--server-address", "fl.example.org:8002", "--server-address", "site-2=192.0.2.1:9"]
    args += ["--bucket", "b-{participant}", "--digest", DIGEST, "--gpu", "site-1=1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "secrets.sh" in printed and "gcp-iam.sh" in printed and "dials fl.example.org" in printed
    docs = render(out)
    admin = next(s for s in by_kind(docs, "Service") if s["metadata"]["name"].endswith("-admin"))
    assert admin["spec"]["loadBalancerSourceRanges"] == ["192.0.2.0/24"]
    assert env(deployments(docs)["site-2"])["SHOAL_SERVER_ADDRESS"] == "192.0.2.1:9"


@pytest.mark.parametrize(
    "extra",
    [
        ["--pull-policy", "IfNotPresent"],
        ["--admin-source-range", "10.0.0.0/8"],
        ["--server-address", "nope"],
        ["--server-address", "site-9=h:1"],
        ["--gpu-node-selector", "novalue"],
    ],
)
def test_cli_bad_options_are_usage_errors(
    make_prod: MakeProd, tmp_path: Path, extra: list[str]
) -> None:
    args = ["deploy", "k8s", "--prod-dir", str(make_prod()), "-o", str(tmp_path / "o"), *extra]
    assert main(args) == EXIT_USAGE


# -- item 10: the server gets the data by the same switch as the sites -----------------


def test_data_claim_reaches_the_server_and_every_site(make_prod: MakeProd, tmp_path: Path) -> None:
    plain = render_tree(make_prod(), tmp_path / "plain", K8sOptions())
    for dep in by_kind(plain, "Deployment"):
        assert "SHOAL_MNIST_PATH" not in env(dep)
        assert "data" not in {v["name"] for v in dep["spec"]["template"]["spec"]["volumes"]}
    docs = render_tree(make_prod(), tmp_path / "data", K8sOptions(data_claim="fl-data"))
    deps = by_kind(docs, "Deployment")
    roles = sorted(d["metadata"]["labels"]["app.kubernetes.io/component"] for d in deps)
    assert roles == ["client", "client", "server"], "hello-tf2 evaluates on the server too"
    for dep in deps:
        assert env(dep)["SHOAL_MNIST_PATH"] == "/data/mnist.npz"
        assert env(dep)["SHOAL_DATA_PATHS"] == "/data"
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        assert volumes["data"]["persistentVolumeClaim"] == {
            "claimName": "fl-data",
            "readOnly": True,
        }
        mounts = {m["name"]: m for m in container(dep)["volumeMounts"]}
        assert mounts["data"] == {"name": "data", "mountPath": "/data", "readOnly": True}
    with pytest.raises(ConfigError, match="--mnist-file"):
        write_manifests(
            make_prod(), tmp_path / "bad", K8sOptions(data_claim="d", mnist_file="../x")
        )


def render_tree(prod: Path, out: Path, options: K8sOptions) -> list[dict[str, Any]]:
    write_manifests(prod, out, options)
    return render(out)
