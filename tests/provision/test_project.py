"""project.yml validation: every bad input names its field and file and writes nothing."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.errors import ConfigError
from shoal.provision import (
    SAMPLE_PROJECT_YML,
    KubernetesSettings,
    load_project,
    provision,
    write_sample_project,
)

from .conftest import PROJECT_YML, snapshot

BASE: dict[str, Any] = yaml.safe_load(PROJECT_YML)


def _variant(change: Callable[[dict[str, Any]], None]) -> str:
    data = copy.deepcopy(BASE)
    change(data)
    return yaml.safe_dump(data, sort_keys=False)


def _set(index: int, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data["participants"][index][key] = value

    return change


def _drop_servers(data: dict[str, Any]) -> None:
    data["participants"] = [p for p in data["participants"] if p["type"] != "server"]


def _two_servers(data: dict[str, Any]) -> None:
    data["participants"].append(dict(data["participants"][0], name="server2"))


def _duplicate(data: dict[str, Any]) -> None:
    data["participants"].append(dict(data["participants"][1]))


BAD: dict[str, tuple[str, str]] = {
    "malformed yaml": ("name: x\nparticipants: [\n  - {name: a\n", "yaml: malformed YAML"),
    "not a mapping": ("- just\n- a list\n", "(top level)"),
    "no participants": ("name: p\n", "participants: must be a non-empty list"),
    "no server": (_variant(_drop_servers), "participants: no participant of type server"),
    "two servers": (_variant(_two_servers), "participants: more than one server"),
    "duplicate name": (_variant(_duplicate), "participants[5].name: duplicate name 'site-1'"),
    "duplicate ignoring case": (
        _variant(lambda d: d["participants"].append(dict(d["participants"][1], name="SITE-1"))),
        "participants[5].name: duplicate name",
    ),
    "empty name": (_variant(_set(1, "name", "")), "participants[1].name: '' must not be empty"),
    "slash in name": (_variant(_set(1, "name", "a/b")), "participants[1].name"),
    "backslash in name": (_variant(_set(1, "name", "a\\b")), "participants[1].name"),
    "dotdot name": (_variant(_set(1, "name", "..")), "participants[1].name"),
    "leading dot": (_variant(_set(1, "name", ".hidden")), "must not start with '.'"),
    "whitespace": (_variant(_set(1, "name", "site 1")), "must not contain whitespace"),
    "name not string": (_variant(_set(1, "name", 5)), "participants[1].name: must be a string"),
    "missing org": (
        _variant(lambda d: d["participants"][1].pop("org")),
        "participants[1].org: missing",
    ),
    "unknown type": (_variant(_set(1, "type", "worker")), "participants[1].type: unknown type"),
    "unknown role": (_variant(_set(3, "role", "superuser")), "participants[3].role: unknown admin"),
    "admin without role": (
        _variant(lambda d: d["participants"][3].pop("role")),
        "participants[3].role: missing",
    ),
    "port too big": (_variant(_set(0, "fed_learn_port", 70000)), "participants[0].fed_learn_port"),
    "port zero": (_variant(_set(0, "admin_port", 0)), "participants[0].admin_port: port 0"),
    "port not int": (_variant(_set(0, "admin_port", "8003")), "participants[0].admin_port"),
    "equal ports": (
        _variant(_set(0, "admin_port", 8002)),
        "participants[0].admin_port: equals fed_learn_port",
    ),
    "health collides": (
        _variant(lambda d: d["participants"][0].update(fed_learn_port=8004, admin_port=8003)),
        "participants[0].health_port",
    ),
    "server name not dns": (
        _variant(_set(0, "name", "server_1")),
        "participants[0].name: server name",
    ),
    "bad host_names": (
        _variant(_set(0, "host_names", ["ok.example", "bad host"])),
        "participants[0].host_names[1]",
    ),
    "host_names not list": (
        _variant(_set(0, "host_names", "a.example")),
        "participants[0].host_names",
    ),
    "bad project name": (_variant(lambda d: d.update(name="../evil")), "name: '../evil'"),
    "api_version": (_variant(lambda d: d.update(api_version=9)), "api_version: unsupported 9"),
    "builders not list": (_variant(lambda d: d.update(builders="x")), "builders: must be a list"),
    "bad namespace": (
        _variant(lambda d: d.update(kubernetes={"server_namespace": "Bad_NS"})),
        "kubernetes.server_namespace",
    ),
    "shared site namespace": (
        _variant(lambda d: d.update(kubernetes={"site_namespace": "sites"})),
        "kubernetes.site_namespace: site-2 and site-1 share namespace 'sites'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_field_and_file_and_writes_nothing(
    case: str, write_project: Callable[[str], Path], tmp_path: Path
) -> None:
    text, expected = BAD[case]
    project = write_project(text)
    workspace = tmp_path / "workspace"
    (workspace / "keep").mkdir(parents=True)
    (workspace / "keep" / "file.txt").write_text("x")
    before = snapshot(tmp_path)

    with pytest.raises(ConfigError) as info:
        provision(project, workspace)

    message = str(info.value)
    assert message.startswith(f"{project}: "), message
    assert expected in message
    assert "\n" not in message
    assert snapshot(tmp_path) == before


def test_missing_project_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="project.yml: file: cannot read"):
        provision(tmp_path / "project.yml", tmp_path / "ws")
    assert not (tmp_path / "ws").exists()


def test_project_parsed(write_project: Callable[[str], Path]) -> None:
    project = load_project(write_project(PROJECT_YML))
    assert project.name == "example_project"
    assert project.server.name == "server1"
    assert project.server.fed_learn_port == 8002
    assert project.server.admin_port == 8003
    assert project.server.health_port == 8004
    assert project.server.host_names == ("fl.example.com", "10.1.2.3")
    assert [p.name for p in project.clients] == ["site-1", "site-2"]
    assert [(p.name, p.role) for p in project.admins] == [
        ("admin@nvidia.com", "project_admin"),
        ("lead@org2.com", "lead"),
    ]
    assert project.kubernetes == KubernetesSettings()
    assert project.kubernetes.namespace_for(project.clients[0]) == "shoal-site-1"
    assert project.kubernetes.namespace_for(project.server) == "shoal-infra"


def test_kubernetes_section(write_project: Callable[[str], Path]) -> None:
    text = PROJECT_YML + "kubernetes:\n  server_namespace: fl\n  site_namespace: fl-{name}\n"
    project = load_project(write_project(text))
    assert project.kubernetes.namespace_for(project.server) == "fl"
    assert project.kubernetes.namespace_for(project.admins[0]) == "fl-admin-nvidia-com"
    assert project.kubernetes.namespace_for(project.clients[1]) == "fl-site-2"


def test_default_ports_and_ignored_keys(write_project: Callable[[str], Path]) -> None:
    text = """\
name: p
participants:
  - {name: srv.example.com, type: server, org: o, connection_security: mtls}
  - {name: s1, type: client, org: o, role: member, listening_host: x}
  - {name: overseer, type: overseer, org: o}
"""
    project = load_project(write_project(text))
    assert (project.server.fed_learn_port, project.server.admin_port) == (8002, 8003)
    assert [p.name for p in project.participants] == ["srv.example.com", "s1"]
    assert "participant srv.example.com: key 'connection_security' ignored" in project.notes
    assert "participant s1: role ignored (only admins have roles)" in project.notes
    assert any("overseer" in note and "ignored" in note for note in project.notes)


def test_nvflare_builders_one_line_each(write_project: Callable[[str], Path]) -> None:
    builders = [
        "workspace.WorkspaceBuilder",
        "template.TemplateBuilder",
        "static_file.StaticFileBuilder",
        "cert.CertBuilder",
        "signature.SignatureBuilder",
        "helm_chart.HelmChartBuilder",
        "docker.DockerBuilder",
        "he.HEBuilder",
        "something.UnknownBuilder",
    ]
    data = copy.deepcopy(BASE)
    data["builders"] = [{"path": f"nvflare.lighter.impl.{b}", "args": {}} for b in builders]
    data["builders"][2]["args"] = {"config_folder": "config", "scheme": "grpc"}
    data["builders"] += ["not-a-mapping", {"args": {}}, {"path": "my.own.Builder"}]
    project = load_project(write_project(yaml.safe_dump(data)))
    lines = [str(note) for note in project.builders]
    assert len(lines) == len(data["builders"])
    assert all(": mapped: " in line or ": ignored: " in line for line in lines)
    status = {note.path.rsplit(".", 1)[-1]: note.status for note in project.builders if note.path}
    for name in ("WorkspaceBuilder", "TemplateBuilder", "StaticFileBuilder"):
        assert status[name] == "mapped"
    assert status["CertBuilder"] == status["SignatureBuilder"] == "mapped"
    assert status["HelmChartBuilder"] == status["DockerBuilder"] == "ignored"
    assert status["UnknownBuilder"] == status["Builder"] == "ignored"
    helm = next(line for line in lines if "HelmChartBuilder" in line)
    assert "shoal deploy k8s" in helm
    static = next(line for line in lines if "StaticFileBuilder" in line)
    assert "config_folder" in static and "scheme" in static


def test_sample_project(tmp_path: Path) -> None:
    path = tmp_path / "project.yml"
    write_sample_project(path)
    assert path.read_text() == SAMPLE_PROJECT_YML
    project = load_project(path)
    assert project.name == "example_project"
    server = project.server
    assert (server.name, server.fed_learn_port, server.admin_port) == ("server1", 8002, 8003)
    assert [p.name for p in project.clients] == ["site-1", "site-2"]
    admin = project.admins[0]
    assert (admin.name, admin.role, admin.org) == ("admin@nvidia.com", "project_admin", "nvidia")
    assert project.builders == () and project.notes == ()


def test_sample_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "project.yml"
    path.write_text("mine")
    with pytest.raises(ConfigError, match="already exists"):
        write_sample_project(path)
    assert path.read_text() == "mine"
