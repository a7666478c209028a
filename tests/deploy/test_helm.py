"""The Helm charts: `helm lint --strict` clean, every object valid for
Kubernetes 1.30 (kubernetes-validate --strict), and the same objects as the
kustomize tree for the same options (both rendered, then compared)."""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from shoal.cli.app import EXIT_USAGE, main
from shoal.deploy import K8sOptions, read_prod_dir, write_manifests
from shoal.deploy.helm import CHARTS, helm_releases, write_helm
from shoal.errors import ConfigError

from . import helmtool
from .conftest import MakeProd
from .test_k8s import CRD_KINDS, K8S_VERSION, VARIANTS, needs_kubectl, render

pytestmark = pytest.mark.skipif(
    helmtool.why_unavailable() is not None, reason=helmtool.why_unavailable() or ""
)

#: The kustomize variants, with the Secret referred to (the charts never make it).
HELM_VARIANTS = {
    name: dataclasses.replace(options, secrets="reference") for name, options in VARIANTS.items()
}
HELM_VARIANTS["sites-bucket"] = K8sOptions(bucket="acme-fl", bucket_for="sites", pdb=False)
# The data claim beside the server's state volume (bucket mode): the order of
# env, mounts and volumes must match kustomize's too.
HELM_VARIANTS["data-bucket"] = K8sOptions(
    data_claim="fl-data", mnist_file="mnist-2.npz", bucket="acme-fl", secrets="reference"
)

_HASHED = re.compile(r"^(shoal-local)-[a-z0-9]{10}$")
_HELM_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/version")


def _unhash(name: str) -> str:
    return _HASHED.sub(r"\1", name)


def normalize(doc: dict[str, Any]) -> dict[str, Any]:
    """What must be equal: everything but namespace (set at install), labels
    (checked apart: Helm adds its own), and kustomize's ConfigMap hash / Helm's
    checksum annotation (two ways to roll the pod on a new local/)."""
    d = copy.deepcopy(doc)
    meta = d["metadata"]
    meta.pop("namespace", None)
    meta.pop("labels", None)
    meta["name"] = _unhash(meta["name"])
    if d["kind"] == "Deployment":
        template = d["spec"]["template"]
        notes = template["metadata"].get("annotations", {})
        for key in [k for k in notes if k.startswith("checksum/")]:
            del notes[key]
        if not notes:
            template["metadata"].pop("annotations", None)
        for volume in template["spec"]["volumes"]:
            if "configMap" in volume:
                volume["configMap"]["name"] = _unhash(volume["configMap"]["name"])
    return d


def _key(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["kind"], _unhash(doc["metadata"]["name"])


@needs_kubectl
@pytest.mark.parametrize("variant", sorted(HELM_VARIANTS))
def test_charts_render_what_kustomize_renders(
    make_prod: MakeProd, tmp_path: Path, variant: str
) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    options = HELM_VARIANTS[variant]
    prod_dir = make_prod(gpus={"site-2": 1})
    (prod_dir / "site-2" / "local" / "resources.json").write_text(
        '{"format": 1, "num_gpus": 1, "gpu_type": "nvidia-l4"}'
    )
    out = tmp_path / "k8s"
    write_manifests(prod_dir, out, options)
    releases = helm_releases(read_prod_dir(prod_dir), options)
    assert [r.name for r in releases] == ["server1", "site-1", "site-2"]
    for release in releases:
        chart = CHARTS / release.chart
        assert helmtool.lint(chart, release.values) == [], release.name
        helm_docs = helmtool.template(
            chart, release.values, name=release.name, namespace=release.namespace
        )
        for doc in helm_docs:
            if doc["kind"] not in CRD_KINDS:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        kustomized = [
            d for d in render(out / "overlays" / release.name) if d["kind"] != "Namespace"
        ]
        ours = {_key(d): d for d in helm_docs}
        theirs = {_key(d): d for d in kustomized}
        assert sorted(ours) == sorted(theirs), release.name
        for key, doc in theirs.items():
            assert normalize(ours[key]) == normalize(doc), (release.name, key)
            # Helm's labels are kustomize's plus its own (a ConfigMap has no component).
            helm_labels = {
                k: v for k, v in ours[key]["metadata"]["labels"].items() if k not in _HELM_LABELS
            }
            kz_labels = doc["metadata"]["labels"]
            assert kz_labels.items() <= helm_labels.items(), (release.name, key)


def test_chart_defaults_lint_clean() -> None:
    for chart in ("shoal-server", "shoal-site"):
        assert helmtool.lint(CHARTS / chart, {}) == [], chart
        docs = helmtool.template(CHARTS / chart, {}, name="x", namespace="shoal")
        kinds = {d["kind"] for d in docs}
        assert {"Deployment", "PersistentVolumeClaim", "PodDisruptionBudget"} <= kinds
        assert "Secret" not in kinds


@pytest.mark.parametrize("chart", ["shoal-server", "shoal-site"])
def test_chart_data_claim_mounts_read_only_in_server_and_site(chart: str) -> None:
    def pod(values: dict[str, Any]) -> dict[str, Any]:
        docs = helmtool.template(CHARTS / chart, values, name="x", namespace="shoal")
        (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
        return dict(deployment["spec"]["template"]["spec"])

    plain = pod({})
    assert "data" not in {v["name"] for v in plain["volumes"]}
    assert "SHOAL_MNIST_PATH" not in {e["name"] for e in plain["containers"][0]["env"]}

    spec = pod({"data": {"claim": "fl-data", "mnistFile": "mnist-1.npz"}})
    (shoal,) = spec["containers"]
    env = {e["name"]: e["value"] for e in shoal["env"]}
    assert env["SHOAL_DATA_PATHS"] == "/data"
    assert env["SHOAL_MNIST_PATH"] == "/data/mnist-1.npz"
    mounts = {m["name"]: m for m in shoal["volumeMounts"]}
    assert mounts["data"] == {"name": "data", "mountPath": "/data", "readOnly": True}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["data"] == {
        "name": "data",
        "persistentVolumeClaim": {"claimName": "fl-data", "readOnly": True},
    }
    assert helmtool.lint(CHARTS / chart, {"data": {"claim": "fl-data"}}) == []

    bad_claim = helmtool.render_error(CHARTS / chart, {"data": {"claim": "Not_A_Claim"}})
    assert "data.claim" in bad_claim and "not a PVC name" in bad_claim
    bad_file = {"data": {"claim": "fl-data", "mnistFile": "../etc/passwd"}}
    assert "data.mnistFile" in helmtool.render_error(CHARTS / chart, bad_file)


def test_chart_refuses_mutable_tag_with_if_not_present() -> None:
    values = {"image": {"repository": "reg/shoal", "tag": "1.0", "pullPolicy": "IfNotPresent"}}
    assert "IfNotPresent with a tag" in helmtool.render_error(CHARTS / "shoal-site", values)
    values["image"]["digest"] = "sha256:" + "ab" * 32
    assert helmtool.render_error(CHARTS / "shoal-site", values) == ""


def test_chart_refuses_ranges_on_cluster_ip() -> None:
    values = {
        "adminService": {
            "name": "a",
            "type": "ClusterIP",
            "loadBalancerSourceRanges": ["10.0.0.0/8"],
        }
    }
    assert "need type LoadBalancer" in helmtool.render_error(CHARTS / "shoal-server", values)


def test_write_helm_holds_no_keys(make_prod: MakeProd, tmp_path: Path) -> None:
    out = tmp_path / "helm"
    files = write_helm(make_prod(), out, K8sOptions(bucket="acme-fl-{participant}"))
    rel = {p.relative_to(out).as_posix() for p in files}
    assert {"values/server1.yaml", "values/site-1.yaml", "shoal-server/Chart.yaml"} <= rel
    assert {"secrets.sh", "gcp-iam.sh", "shoal-site/templates/NOTES.txt"} <= rel
    for path in files:
        assert "PRIVATE KEY" not in path.read_text(), path
    with pytest.raises(ConfigError, match="never hold keys"):
        write_helm(make_prod(), tmp_path / "h2", K8sOptions(secrets="generate"))


def test_cli_deploy_helm(
    make_prod: MakeProd, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "helm"
    assert main(["deploy", "helm", "--prod-dir", str(make_prod()), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"helm upgrade --install server1 {out / 'shoal-server'} -n fl-infra" in printed
    assert "secrets.sh" in printed
    args = ["deploy", "helm", "--prod-dir", str(make_prod()), "-o", str(tmp_path / "h2")]
    assert main([*args, "--secrets", "generate"]) == EXIT_USAGE
