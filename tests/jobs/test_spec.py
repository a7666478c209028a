"""job.yml parsing and validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from shoal.errors import JobValidationError
from shoal.jobs import JobSpec, load_job_spec, pack_job
from shoal.jobs.spec import check_worker_env
from shoal.workflows.registry import parse_params

from .conftest import JOB_YML, make_job


def test_loads_the_reference_job(job_dir: Path) -> None:
    spec = load_job_spec(job_dir)
    assert spec.name == "hello-tf2"
    assert spec.min_clients == 2
    assert spec.sites == ("site-1", "site-2")
    assert spec.workflow.name == "fedavg"
    assert dict(spec.workflow.params) == {"num_rounds": 3, "round_timeout_s": 600}
    assert spec.client.script == "train.py"
    assert spec.client.args == ("--epochs", "2")
    assert dict(spec.client.env) == {"KEY": "value", "N": "3"}
    assert spec.server.model == "model:build_model"
    assert spec.server.evaluate == "evaluate:evaluate"
    assert spec.server.initial_weights is None
    assert dict(spec.resources) == {"gpu": 1}
    assert spec.start_timeout_s == 300.0
    params = parse_params("fedavg", spec.workflow.params)
    assert params.num_rounds == 3
    assert params.sample_fraction == 1.0


def test_to_dict_round_trips(job_dir: Path, tmp_path: Path) -> None:
    spec = load_job_spec(job_dir)
    (job_dir / "job.yml").write_text(yaml.safe_dump(spec.to_dict()))
    assert load_job_spec(job_dir) == spec


def test_loads_a_zip(job_dir: Path, tmp_path: Path) -> None:
    archive = pack_job(job_dir, tmp_path / "job.zip")
    assert load_job_spec(archive) == load_job_spec(job_dir)


def test_loads_a_zip_with_a_top_folder(job_dir: Path, tmp_path: Path) -> None:
    import zipfile

    archive = tmp_path / "wrapped.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(job_dir.rglob("*")):
            if p.is_file():
                zf.write(p, f"hello-tf2/{p.relative_to(job_dir).as_posix()}")
    assert load_job_spec(archive).name == "hello-tf2"


def test_minimal_job(tmp_path: Path) -> None:
    root = make_job(
        tmp_path / "j",
        "name: j\nmin_clients: 1\nworkflow: {name: fedavg, num_rounds: 1}\n"
        "client: {script: train.py}\nserver: {initial_weights: 'model:build_model'}\n",
    )
    spec = load_job_spec(root)
    assert spec.sites is None
    assert spec.client.args == ()
    assert spec.start_timeout_s == 300.0
    assert spec.rejoin_grace_s == 15.0
    assert "rejoin_grace_s" not in spec.to_dict()


@pytest.mark.parametrize("value", ["0", "2.5", "3600"])
def test_rejoin_grace_is_the_jobs_own(tmp_path: Path, value: str) -> None:
    root = _with(tmp_path, "start_timeout_s: 300", f"start_timeout_s: 300\nrejoin_grace_s: {value}")
    spec = load_job_spec(root)
    assert spec.rejoin_grace_s == float(value)
    (root / "job.yml").write_text(yaml.safe_dump(spec.to_dict()))
    assert load_job_spec(root) == spec


def _with(tmp_path: Path, old: str, new: str) -> Path:
    text = JOB_YML.replace(old, new)
    assert text != JOB_YML or old == new
    return make_job(tmp_path / "j", text)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("name: hello-tf2", "name: -bad", "job.yml: name:"),
        ("name: hello-tf2", "name: " + "x" * 65, "job.yml: name:"),
        ("min_clients: 2", "min_clients: 0", "job.yml: min_clients:"),
        ("min_clients: 2", "min_clients: two", "job.yml: min_clients:"),
        ("min_clients: 2", "min_clients: 3", "job.yml: sites: 2 site"),
        ("sites: [site-1, site-2]", "sites: [site-1, site-1]", "listed twice"),
        ("sites: [site-1, site-2]", "sites: []", "job.yml: sites:"),
        (
            "  name: fedavg",
            "  name: fedsgd",
            r"unknown workflow 'fedsgd' \(known: [^)]*\bfedavg\b[^)]*\)",
        ),
        ("  num_rounds: 3", "  num_rounds: 0", "job.yml: workflow.num_rounds:"),
        ("  num_rounds: 3", "  num_rounds: 3\n  bogus: 1", "job.yml: workflow.bogus:"),
        ("  round_timeout_s: 600", "  round_timeout_s: -1", "workflow.round_timeout_s"),
        ("  round_timeout_s: 600", "  sample_fraction: 1.5", "workflow.sample_fraction"),
        (
            "  script: train.py",
            "  script: missing.py",
            "job.yml: client.script: 'missing.py' not found",
        ),
        ("  script: train.py", "  script: ../train.py", "job.yml: client.script: .* relative"),
        ("  script: train.py", "  script: /etc/passwd", "job.yml: client.script: .* relative"),
        ("  script: train.py", "  nope: 1\n  script: train.py", "job.yml: client.nope: unknown"),
        ("  env: {KEY: value, N: 3}", "  env: {1BAD: x}", "job.yml: client.env.1BAD"),
        ("  env: {KEY: value, N: 3}", "  env: {K: [1]}", "job.yml: client.env.K"),
        ('  args: ["--epochs", 2]', "  args: --epochs", "job.yml: client.args"),
        (
            "  model: model:build_model",
            "  model: nomodule:build",
            "job.yml: server.model: .*not found",
        ),
        (
            "  model: model:build_model",
            "  model: not a hook",
            "job.yml: server.model: .*module:attr",
        ),
        (
            "  model: model:build_model",
            "  model: model:build_model\n  initial_weights: model:build_model",
            "not both",
        ),
        ("  model: model:build_model\n", "", "fedavg needs server.model or server.initial_weights"),
        ("start_timeout_s: 300", "start_timeout_s: 0", "job.yml: start_timeout_s:"),
        ("start_timeout_s: 300", "rejoin_grace_s: -1", r"job.yml: rejoin_grace_s: .*0 to 3600"),
        ("start_timeout_s: 300", "rejoin_grace_s: 3601", r"job.yml: rejoin_grace_s: .*3601"),
        ("start_timeout_s: 300", "rejoin_grace_s: .inf", r"job.yml: rejoin_grace_s:"),
        ("start_timeout_s: 300", "rejoin_grace_s: true", r"job.yml: rejoin_grace_s:"),
        ("resources: {gpu: 1}", "resources: [1]", "job.yml: resources:"),
        ("resources: {gpu: 1}", "extra_key: 1", "job.yml: extra_key: unknown key"),
        (
            "min_clients: 2",
            "min_clients: 2\nmin_clients: 1",
            "job.yml: min_clients: key appears more",
        ),
        ("name: hello-tf2", "name: [unclosed", "not valid YAML"),
        ("  args:", "  config: {round: 3}\n  args:", "job.yml: client.config.round: reserved"),
        ("  args:", "  config: [1]\n  args:", "job.yml: client.config: must be a mapping"),
        (
            "  args:",
            "  config: {big: '"
            + "x" * 16000
            + "', b2: '"
            + "x" * 16000
            + "', b3: '"
            + "x" * 16000
            + "', b4: '"
            + "x" * 16000
            + "', b5: '"
            + "x" * 16000
            + "'}\n  args:",
            "job.yml: client.config: .* bytes as JSON, more than 65536",
        ),
        (
            "resources: {gpu: 1}",
            "filters: {result_out: [nomod:F]}",
            r"job.yml: filters.result_out\[0\]: .*module 'nomod' not found in app/",
        ),
        ("resources: {gpu: 1}", "filters: {elsewhere: []}", "job.yml: filters.elsewhere: unknown"),
    ],
)
def test_refusals(tmp_path: Path, old: str, new: str, message: str) -> None:
    root = _with(tmp_path, old, new)
    with pytest.raises(JobValidationError, match=message):
        load_job_spec(root)


def test_client_config_and_filters_round_trip(tmp_path: Path) -> None:
    root = _with(
        tmp_path,
        "resources: {gpu: 1}",
        "resources: {gpu: 1}\nfilters:\n  result_in: [identity, {filter: 'model:build_model', "
        "args: {a: 1}}]",
    )
    text = (
        (root / "job.yml")
        .read_text()
        .replace("  args:", "  config: {lr: 0.1, nested: {a: [1]}}\n  args:")
    )
    (root / "job.yml").write_text(text)
    spec = load_job_spec(root)
    assert dict(spec.client.config) == {"lr": 0.1, "nested": {"a": [1]}}
    assert [f.name for f in spec.filters["result_in"]] == ["identity", "model:build_model"]
    (root / "job.yml").write_text(yaml.safe_dump(spec.to_dict()))
    assert load_job_spec(root) == spec


def test_missing_sections(tmp_path: Path) -> None:
    root = make_job(tmp_path / "j", "name: j\nmin_clients: 1\nclient: {script: train.py}\n")
    with pytest.raises(JobValidationError, match="job.yml: workflow: required"):
        load_job_spec(root)
    (root / "job.yml").write_text(
        "name: j\nmin_clients: 1\nworkflow: {name: fedavg, num_rounds: 1}\n"
    )
    with pytest.raises(JobValidationError, match="job.yml: client: required"):
        load_job_spec(root)
    (root / "job.yml").write_text("- a list\n")
    with pytest.raises(JobValidationError, match="must be a mapping"):
        load_job_spec(root)


def test_folder_problems(tmp_path: Path) -> None:
    with pytest.raises(JobValidationError, match="no such job"):
        load_job_spec(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(JobValidationError, match="job.yml: not found"):
        load_job_spec(tmp_path / "empty")
    (tmp_path / "noapp").mkdir()
    (tmp_path / "noapp" / "job.yml").write_text(JOB_YML)
    with pytest.raises(JobValidationError, match="no app folder"):
        load_job_spec(tmp_path / "noapp")
    (tmp_path / "file.txt").write_text("hi")
    with pytest.raises(JobValidationError, match="not a job folder or a zip"):
        load_job_spec(tmp_path / "file.txt")


def test_script_link_outside_app_refused(tmp_path: Path) -> None:
    root = make_job(tmp_path / "j")
    (tmp_path / "outside.py").write_text("")
    (root / "app" / "train.py").unlink()
    (root / "app" / "train.py").symlink_to(tmp_path / "outside.py")
    with pytest.raises(JobValidationError, match="client.script"):
        load_job_spec(root)


def test_check_sites(job_dir: Path) -> None:
    spec: JobSpec = load_job_spec(job_dir)
    spec.check_sites(["site-1", "site-2", "site-3"])
    with pytest.raises(JobValidationError, match="job.yml: sites: site-2 not in the project"):
        spec.check_sites(["site-1", "site-3"])
    with pytest.raises(JobValidationError, match="min_clients: 2 is more than the 1 site"):
        dataclasses.replace(spec, sites=None).check_sites(["site-1"])


# -- bounds (issue 16, findings 3, 7, 11) ---------------------------------------------

_LOL = "".join(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 8))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        # YAML anchors and aliases: refused outright, with the line.
        ("resources: {gpu: 1}", "resources: {a: &x 1, b: *x}", "job.yml: line 15: .*aliases"),
        (
            "resources: {gpu: 1}",
            "resources:\n  l0: &l0 [lol, lol]\n" + _LOL,
            "job.yml: line 16: YAML anchors and aliases are not allowed",
        ),
        # Numbers: every one bounded, the field named with its range.
        ("  num_rounds: 3", "  num_rounds: 1000000000000000000000000", "workflow.num_rounds"),
        ("  num_rounds: 3", "  num_rounds: 1000001", r"workflow.num_rounds: .*1\.\.1000000"),
        ("  num_rounds: 3", "  num_rounds: 3\n  seed: -1", "workflow.seed"),
        ("  num_rounds: 3", "  num_rounds: 3\n  keep_models: 99999999", "workflow.keep_models"),
        (
            "  round_timeout_s: 600",
            "  round_timeout_s: 1.0e+400",
            "workflow.round_timeout_s: .*finite",
        ),
        ("  round_timeout_s: 600", "  round_timeout_s: 99999999", "workflow.round_timeout_s"),
        ("min_clients: 2", "min_clients: 100000", r"min_clients: .*1\.\.10000"),
        ("start_timeout_s: 300", "start_timeout_s: 1.0e+12", "start_timeout_s: .*limit"),
        ("resources: {gpu: 1}", "resources: {gpu: .nan}", "resources.gpu: .*finite"),
        ("name: hello-tf2", "name: hello-tf2\nx: " + "9" * 5000, "not valid YAML: .*too long"),
        # Sizes: strings, lists, nesting, resources.
        ('  args: ["--epochs", 2]', f"  args: [{'x' * 20000}]", r"client.args\[0\]: string of"),
        ('  args: ["--epochs", 2]', f"  args: [{', '.join(['a'] * 300)}]", "client.args: 300"),
        ('  args: ["--epochs", 2]', '  args: ["a\\0b"]', r"client.args\[0\]: .*NUL"),
        (
            "resources: {gpu: 1}",
            "resources: {a: {b: {c: {d: 1}}}}",
            "resources.a.b.c.d: nested deeper than 3",
        ),
        (
            "resources: {gpu: 1}",
            "resources: {" + ", ".join(f"k{i}: 1" for i in range(65)) + "}",
            "resources: more than 64 keys",
        ),
        (
            "resources: {gpu: 1}",
            "resources: {a: [" + "x" * 9000 + ", " + "y" * 9000 + "]}",
            "resources: .* bytes as JSON",
        ),
        ("resources: {gpu: 1}", "resources: " + "[" * 12 + "]" * 12, "nested deeper than 8"),
        # The worker's environment: loader and interpreter hooks refused.
        ("  env: {KEY: value, N: 3}", "  env: {LD_PRELOAD: /tmp/x.so}", "client.env.LD_PRELOAD: "),
        ("  env: {KEY: value, N: 3}", "  env: {PYTHONPATH: /tmp}", "client.env.PYTHONPATH: "),
        ("  env: {KEY: value, N: 3}", "  env: {SHOAL_JOB_ID: x}", "client.env.SHOAL_JOB_ID: "),
        ("  env: {KEY: value, N: 3}", "  env: {path: /tmp}", "client.env.path: "),
    ],
)
def test_bounds(tmp_path: Path, old: str, new: str, message: str) -> None:
    root = _with(tmp_path, old, new)
    with pytest.raises(JobValidationError, match=message):
        load_job_spec(root)


@pytest.mark.parametrize(
    "name",
    [
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "DYLD_INSERT_LIBRARIES",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "PYTHONHOME",
        "PYTHONINSPECT",
        "SHOAL_SERVER",
        "PATH",
        "HOME",
        "TMPDIR",
        "BASH_ENV",
        "ENV",
        "PERL5LIB",
        "RUBYLIB",
        "NODE_OPTIONS",
        "GCONV_PATH",
        "MALLOC_CHECK_",
        "GLIBC_TUNABLES",
        "ld_preload",
        "1BAD",
        "A-B",
        "A=B",
    ],
)
def test_worker_env_refused(name: str) -> None:
    with pytest.raises(JobValidationError, match="job.yml: client.env."):
        check_worker_env({name: "x"})


def test_worker_env_allowed_and_bounded() -> None:
    check_worker_env(
        {"OMP_NUM_THREADS": "4", "CUDA_VISIBLE_DEVICES": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}
    )
    with pytest.raises(JobValidationError, match="client.env: 65 variables"):
        check_worker_env({f"V{i}": "x" for i in range(65)})
    with pytest.raises(JobValidationError, match="client.env.V: value is"):
        check_worker_env({"V": "x" * 20_000})
    with pytest.raises(JobValidationError, match="client.env.V: must be a string"):
        check_worker_env({"V": 3})
