"""shoal.client.policy: the site policy's parser (each bad key named), its
decisions, the summary the server checks by, and the provisioned default."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pytest
import yaml

from shoal.client.policy import (
    Caps,
    JobFacts,
    PolicyCache,
    Principal,
    SitePolicy,
    load_policy,
    parse_policy,
)
from shoal.errors import ConfigError, JobValidationError
from shoal.jobs import read_job_file_in_zip
from shoal.provision.templates import SITE_POLICY_YML, local_files

SHA = "a" * 64
ALICE = Principal(name="alice@a.org", org="a", role="lead")


def facts(**kw: object) -> JobFacts:
    base: dict[str, object] = {"submitter": ALICE, "code_sha256": SHA, "workflow": "fedavg"}
    base.update(kw)
    return JobFacts(**base)  # type: ignore[arg-type]


def test_absent_or_empty_file_allows_everything(tmp_path: Path) -> None:
    assert load_policy(tmp_path / "policy.yml") == SitePolicy()
    (tmp_path / "policy.yml").write_text("")
    assert load_policy(tmp_path / "policy.yml") == SitePolicy()
    assert SitePolicy().refusal(facts(running_jobs=99, filters={}, signer=Principal())) is None


def test_the_provisioned_file_is_the_defaults_written_out() -> None:
    assert local_files("client")["policy.yml"] == SITE_POLICY_YML
    assert "policy.yml" not in local_files("server")
    assert parse_policy(yaml.safe_load(SITE_POLICY_YML)) == SitePolicy()


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("colour: blue\n", "colour: unknown key"),
        ("submitters: {org: [a]}\n", "submitters: org: unknown key"),
        ("submitters: {orgs: a}\n", "submitters.orgs: must be a list of names"),
        ("submitters: [a]\n", "submitters: must be a mapping"),
        ("code: {allow: maybe}\n", "code.allow: must be one of any, none, sha256, signed"),
        ("code: {allow: sha256}\n", "code.sha256: code.allow is sha256 but no hash"),
        ("code: {allow: sha256, sha256: [abc]}\n", "code.sha256: 'abc' is not"),
        ("code: {allow: sha256, sha256: [12]}\n", "code.sha256: write each hash in quotes"),
        ("code: {allow: signed}\n", "code.signers: code.allow is signed but no signer"),
        ("code: {hashes: []}\n", "code: hashes: unknown key"),
        ("workflows: fedavg\n", "workflows: must be a list of names"),
        ("filters: {result_in: [clip]}\n", "filters: result_in: unknown key"),
        ("filters: {result_out: clip}\n", "filters.result_out: must be a list"),
        ("resources: {memory: 1}\n", "resources: memory: unknown key"),
        ("resources: {memory_mb: 0}\n", "resources.memory_mb: must be a whole number > 0"),
        ("resources: {memory_mb: 1.5}\n", "resources.memory_mb: must be a whole number"),
        ("resources: {cpu_seconds: true}\n", "resources.cpu_seconds: must be"),
        ("resources: {wall_time_s: -1}\n", "resources.wall_time_s: must be a number > 0"),
        ("resources: {wall_time_s: .nan}\n", "resources.wall_time_s: must be a number > 0"),
        ("resources: {processes: '9'}\n", "resources.processes: must be"),
        ("resources: {concurrent_jobs: -2}\n", "resources.concurrent_jobs: must be"),
        ("resources: {gpus: 0}\n", "resources.gpus: must be a list"),
        ("resources: {gpus: ['0,1']}\n", "resources.gpus: one device per entry"),
        ("metrics_may_leave: 'no'\n", "metrics_may_leave: must be true or false"),
        ("- a\n", "must be a mapping of settings"),
        ("a: &x 1\nb: *x\n", "anchors and aliases are not allowed"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_a_bad_file_is_refused_naming_the_key(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "policy.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_policy(path)
    assert named in str(err.value)
    assert str(path) in str(err.value)


def test_a_full_policy_parses(tmp_path: Path) -> None:
    path = tmp_path / "policy.yml"
    path.write_text(
        "submitters: {orgs: [a, b], roles: [lead], admins: [root@c.org]}\n"
        f"code: {{allow: sha256, sha256: [{SHA}]}}\n"
        "workflows: [fedavg]\n"
        "filters: {result_out: [clip]}\n"
        "resources: {memory_mb: 512, cpu_seconds: 60, wall_time_s: 1.5, processes: 64,"
        " concurrent_jobs: 2, gpus: [0, GPU-abc]}\n"
        "metrics_may_leave: false\n"
    )
    policy = load_policy(path)
    assert policy.orgs == ("a", "b") and policy.roles == ("lead",)
    assert policy.admins == ("root@c.org",)
    assert policy.code == "sha256" and policy.code_sha256 == (SHA,)
    assert policy.workflows == ("fedavg",)
    assert policy.filters == {"result_out": ("clip",)}
    assert policy.caps == Caps(
        memory_mb=512,
        cpu_seconds=60,
        wall_time_s=1.5,
        processes=64,
        concurrent_jobs=2,
        gpus=("0", "GPU-abc"),
    )
    assert policy.metrics_may_leave is False
    assert policy.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_submitters_orgs_roles_and_named_admins() -> None:
    policy = parse_policy({"submitters": {"orgs": ["a"], "roles": ["lead"], "admins": ["x@c"]}})
    assert policy.refusal(facts()) is None
    assert "org b may not run jobs here (allowed: a)" in str(
        policy.refusal(facts(submitter=Principal("bob@b", "b", "lead")))
    )
    assert "role member may not run jobs here (allowed: lead)" in str(
        policy.refusal(facts(submitter=Principal("carol@a", "a", "member")))
    )
    # Named admins whatever their org and role.
    assert policy.refusal(facts(submitter=Principal("x@c", "c", "member"))) is None
    only_named = parse_policy({"submitters": {"admins": ["x@c"]}})
    assert "not among the admins allowed here" in str(only_named.refusal(facts()))
    nobody = parse_policy({"submitters": {"orgs": []}})
    assert "(allowed: none)" in str(nobody.refusal(facts()))


def test_code_rules() -> None:
    assert parse_policy({"code": {"allow": "none"}}).refusal(facts()) == (
        "this site runs no job code"
    )
    listed = parse_policy({"code": {"allow": "sha256", "sha256": [SHA]}})
    assert listed.refusal(facts()) is None
    assert "code bbbbbbbbbbbb... is not on the site's allow-list" in str(
        listed.refusal(facts(code_sha256="b" * 64))
    )
    signed = parse_policy({"code": {"allow": "signed", "signers": ["alice@a.org"]}})
    assert signed.refusal(facts(signer=ALICE)) is None
    assert "unsigned" in str(signed.refusal(facts(signer=Principal())))
    assert "signer mallory is not allowed here (allowed: alice@a.org)" in str(
        signed.refusal(facts(signer=Principal.of("mallory")))
    )
    # A checker that cannot see the signer (the server) leaves it to the site.
    assert signed.refusal(facts(signer=None)) is None
    assert Principal.of({"name": "n", "org": "o", "role": "r"}) == Principal("n", "o", "r")
    assert not Principal.of("") and not Principal.of(None)


def test_workflows_filters_and_concurrency() -> None:
    policy = parse_policy(
        {
            "workflows": ["fedavg"],
            "filters": {"result_out": ["clip"]},
            "resources": {"concurrent_jobs": 1},
        }
    )
    assert "workflow scaffold may not run here (allowed: fedavg)" in str(
        policy.refusal(facts(workflow="scaffold"))
    )
    assert "filter clip must run at result_out" in str(
        policy.refusal(facts(filters={"result_out": ["gaussian"]}))
    )
    assert policy.refusal(facts(filters={"result_out": ["gaussian", "clip"]})) is None
    assert "1 job(s) already running, the site's cap is 1" in str(
        policy.refusal(facts(running_jobs=1))
    )
    assert policy.refusal(facts(running_jobs=0)) is None


def test_the_summary_round_trips_to_the_same_decisions() -> None:
    policy = parse_policy(
        {
            "submitters": {"orgs": ["a"], "admins": ["x@c"]},
            "code": {"allow": "sha256", "sha256": [SHA]},
            "workflows": ["fedavg"],
            "filters": {"result_out": ["clip"]},
            "resources": {"memory_mb": 100, "gpus": []},
            "metrics_may_leave": False,
        }
    )
    again = SitePolicy.from_summary(policy.summary())
    assert again == policy
    assert policy.summary()["caps"] == {"memory_mb": 100, "gpus": []}
    with pytest.raises(ConfigError, match="site policy summary: code.allow"):
        SitePolicy.from_summary({"code": "all"})


def test_the_cache_rereads_an_edited_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yml"
    cache = PolicyCache(path)
    assert cache.get() == SitePolicy()
    path.write_text("workflows: [fedavg]\n")
    assert cache.get().workflows == ("fedavg",)
    first = cache.get()
    assert cache.get() is first  # unchanged: not parsed again
    path.write_text("workflows: [cyclic]\n")
    os.utime(path, ns=(1, 1))  # same size, another mtime
    assert cache.get().workflows == ("cyclic",)
    path.write_text("workflows: cyclic\n")
    with pytest.raises(ConfigError, match="workflows"):
        cache.get()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_job_yml_is_read_from_the_archive_in_memory(tmp_path: Path) -> None:
    yml = b"name: j\nworkflow: {name: fedavg}\n"
    at_root = _zip(tmp_path / "a.zip", {"job.yml": yml, "app/train.py": b""})
    assert read_job_file_in_zip(at_root)["workflow"] == {"name": "fedavg"}
    nested = _zip(tmp_path / "b.zip", {"j/job.yml": yml, "j/app/train.py": b"", ".DS": b""})
    assert read_job_file_in_zip(nested)["name"] == "j"
    two = _zip(tmp_path / "c.zip", {"a/job.yml": yml, "b/x": b""})
    with pytest.raises(JobValidationError, match="job.yml: not found"):
        read_job_file_in_zip(two)
    big = _zip(tmp_path / "d.zip", {"job.yml": b"#" * (1024 * 1024 + 1)})
    with pytest.raises(JobValidationError, match="larger than"):
        read_job_file_in_zip(big)
    aliases = _zip(tmp_path / "e.zip", {"job.yml": b"a: &x 1\nb: *x\n"})
    with pytest.raises(JobValidationError, match="anchors and aliases"):
        read_job_file_in_zip(aliases)
    (tmp_path / "f.zip").write_bytes(b"not a zip")
    with pytest.raises(JobValidationError, match="not a readable job archive"):
        read_job_file_in_zip(tmp_path / "f.zip")
