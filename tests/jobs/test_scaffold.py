"""``shoal job new``: each template, written by the real CLI, passes ``shoal job
check`` and runs as written in ``shoal simulate``; refusals write nothing."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest

from shoal.cli.app import EXIT_USAGE, main
from shoal.errors import ConfigError
from shoal.jobs import FRAMEWORKS, check_job, new_job
from shoal.sim.runner import SimulationResult
from shoal.testing import run_simulation
from shoal.workflows.registry import workflow_names


def _shoal(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """The real ``shoal`` command in a child process (a framework's threads and
    global state stay out of the test process)."""
    return subprocess.run(
        [sys.executable, "-m", "shoal.cli.app", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def _missing(*modules: str) -> str | None:
    for name in modules:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except ModuleNotFoundError:
            return name
    return None


def _new_then_simulate(framework: str, tmp_path: Path) -> dict[str, float]:
    name = f"my-{framework}"
    made = _shoal("job", "new", name, "--framework", framework, cwd=tmp_path)
    assert made.returncode == 0, made.stdout + made.stderr
    assert f"created {name}/ ({framework}, fedavg):" in made.stdout
    checked = _shoal("job", "check", name, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith(f"{name}: OK: job {name!r}, fedavg")

    started = time.monotonic()
    run = _shoal("simulate", name, "-n", "2", "-w", str(tmp_path / "runs"), cwd=tmp_path)
    seconds = time.monotonic() - started
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"finished: {name}, 2 site(s)" in run.stdout
    print(f"{framework}: shoal simulate -n 2 took {seconds:.1f}s")
    results = tmp_path / "runs" / name
    rows = [json.loads(line) for line in (results / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(r["sites"]) for r in rows] == [["site-1", "site-2"]] * len(rows)
    # Each site trained on its own half of the 3,000 examples.
    assert all(r["num_examples"] == 3000 for r in rows)
    for site in ("site-1", "site-2"):
        assert "1500 training examples" in (results / "logs" / f"{site}.log").read_text()
    assert (results / "models" / "global_final.safetensors").is_file()
    final: dict[str, float] = rows[-1]["server"]
    return final


def test_numpy_template_runs_as_written(tmp_path: Path) -> None:
    final = _new_then_simulate("numpy", tmp_path)
    assert final["accuracy"] > 0.85, final


@pytest.mark.skipif(
    _missing("keras", "tensorflow") is not None, reason="needs TensorFlow (the [tf] extra)"
)
def test_tf_template_runs_as_written(tmp_path: Path) -> None:
    final = _new_then_simulate("tf", tmp_path)
    assert final["accuracy"] > 0.85, final
    assert (tmp_path / "runs" / "my-tf" / "models" / "global_final.keras").is_file()


@pytest.mark.skipif(
    _missing("torch", "shoal.frameworks.torch") is not None,
    reason="needs PyTorch (the [pt] extra) and shoal.frameworks.torch",
)
def test_pt_template_runs_as_written(tmp_path: Path) -> None:
    final = _new_then_simulate("pt", tmp_path)
    assert final["accuracy"] > 0.85, final
    assert (tmp_path / "runs" / "my-pt" / "models" / "global_final.pt").is_file()


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_every_template_is_whole_and_named(framework: str, tmp_path: Path) -> None:
    made = new_job("job-1.b", framework=framework, parent=tmp_path)
    assert made.folder == tmp_path / "job-1.b"
    assert made.files == (
        "README.md",
        "app/data.py",
        "app/evaluate.py",
        "app/model.py",
        "app/train.py",
        "job.yml",
    )
    for rel in made.files:
        text = (made.folder / rel).read_text()
        assert "__JOB_NAME__" not in text and "__WORKFLOW__" not in text, rel
    job_yml = (made.folder / "job.yml").read_text()
    assert "name: job-1.b " in job_yml and "# " in job_yml  # commented
    assert "shoal simulate job-1.b" in (made.folder / "README.md").read_text()
    report = check_job(made.folder)
    assert report.ok and report.spec is not None
    assert report.spec.server.model == "model:build_model"
    assert report.spec.server.evaluate == "evaluate:evaluate"
    assert "import shoal.client as fl" in (made.folder / "app" / "train.py").read_text()
    # Nothing beside the job: the staging folder is gone.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job-1.b"]


def test_an_existing_folder_is_refused_and_left_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "job.yml").write_text("my own work\n")
    code = main(["job", "new", "mine", "--framework", "numpy", "--dir", str(tmp_path)])
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{existing}: already exists; nothing was written" in err
    assert (existing / "job.yml").read_text() == "my own work\n"
    assert sorted(p.name for p in existing.iterdir()) == ["job.yml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    # A file, or a link (even a dangling one), is refused the same way.
    (tmp_path / "afile").write_text("x")
    (tmp_path / "alink").symlink_to(tmp_path / "nowhere")
    for name in ("afile", "alink"):
        with pytest.raises(ConfigError, match="already exists"):
            new_job(name, framework="numpy", parent=tmp_path)
    assert (tmp_path / "afile").read_text() == "x" and not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("name", ["-x", "a b", "../up", "x/y", "", ".hidden", "é", "a" * 65])
def test_a_name_that_is_not_a_job_name_is_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a valid job name"):
        new_job(name, framework="numpy", parent=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_cli_refuses_a_bad_name_as_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["job", "new", "../up", "-f", "numpy", "--dir", str(tmp_path)]) == EXIT_USAGE
    assert "error: '../up' is not a valid job name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [] and not (tmp_path.parent / "up").exists()


def test_unknown_workflow_or_missing_parent_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown workflow 'fedsgd' \(known: [^)]*\bfedavg\b"):
        new_job("j", framework="numpy", workflow="fedsgd", parent=tmp_path)
    with pytest.raises(ConfigError, match="no such folder"):
        new_job("j", framework="numpy", parent=tmp_path / "missing")
    with pytest.raises(ConfigError, match="unknown framework 'jax'"):
        new_job("j", framework="jax", parent=tmp_path)
    assert list(tmp_path.iterdir()) == []


WORKFLOWS = workflow_names()
#: Frameworks whose template a test can run here (numpy always).
RUNNABLE = {
    "numpy": None,
    "pt": _missing("torch", "shoal.frameworks.torch"),
    "tf": _missing("keras", "tensorflow"),
}


def test_every_registered_workflow_is_covered() -> None:
    # A workflow added to the registry gets its own commented parameters.
    templates = resources.files("shoal.jobs") / "templates" / "workflows"
    assert {w for w in WORKFLOWS if not (templates / f"{w}.yml").is_file()} == set()


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
@pytest.mark.parametrize("workflow", WORKFLOWS)
def test_job_new_writes_a_job_that_passes_check_for_every_workflow(
    framework: str, workflow: str, tmp_path: Path
) -> None:
    made = new_job(f"my-{workflow}", framework=framework, workflow=workflow, parent=tmp_path)
    job_yml = (made.folder / "job.yml").read_text()
    assert f"  name: {workflow}\n" in job_yml
    report = check_job(made.folder)
    assert report.ok, report.problems
    assert report.spec is not None and report.spec.workflow.name == workflow
    train = (made.folder / "app" / "train.py").read_text()
    compile(train, "train.py", "exec")  # the marked lines left out, it is still Python
    assert "# [" not in train  # the markers go
    # Every script answers the evaluation tasks, whatever the workflow.
    assert "fl.is_evaluate()" in train and "fl.is_submit_model()" in train
    # SCAFFOLD's helper and FedProx's term only where the workflow asks for them.
    assert ("ScaffoldCorrection" in train or "ControlVariates" in train) == (workflow == "scaffold")
    assert ("proximal_term" in train or "ProximalTerm" in train or "fedprox_mu" in train) == (
        workflow == "fedprox"
    )
    params = report.spec.workflow.params
    if workflow == "fedbuff":
        assert params["num_versions"] >= 1 and "num_rounds" not in params
    elif workflow in ("evaluate", "cross_site_eval"):
        assert "num_rounds" not in params and "# model_path:" in job_yml
    else:
        assert params["num_rounds"] >= 1
    # Each workflow's own parameters are written out with a comment.
    own = {
        "fedavgm": ["server_lr", "server_momentum"],
        "fedadam": ["server_lr", "beta1", "beta2", "tau"],
        "fedyogi": ["server_lr", "beta1", "beta2", "tau"],
        "fedadagrad": ["server_lr", "beta1", "tau"],
        "fedprox": ["mu"],
        "scaffold": ["server_lr"],
        "cyclic": ["order"],
        "fedbuff": ["buffer_size", "server_lr", "staleness"],
        "dp_fedavg": ["noise_multiplier", "clip_norm", "delta"],
        "secagg": ["clip_range", "bits"],
    }.get(workflow, [])
    for key in own:
        line = next(x for x in job_yml.splitlines() if x.startswith(f"  {key}: "))
        assert "  # " in line, line


def _shorter(job: Path, workflow: str) -> None:
    """Two rounds (FedBuff: versions), so that every workflow runs in seconds."""
    path = job / "job.yml"
    text = re.sub(r"(?m)^(  num_rounds|  num_versions): \d+", r"\1: 2", path.read_text())
    path.write_text(text)


@pytest.mark.parametrize("workflow", WORKFLOWS)
def test_the_numpy_template_runs_every_workflow_in_simulate(workflow: str, tmp_path: Path) -> None:
    made = new_job(f"np-{workflow}", framework="numpy", workflow=workflow, parent=tmp_path)
    _shorter(made.folder, workflow)
    sites = 3 if workflow == "secagg" else 2
    result = run_simulation(made.folder, sites, tmp_path / "runs", threads=sites)
    assert result.ok, result.failure_summary()
    _ran(result, workflow, sites)


def _ran(result: SimulationResult, workflow: str, sites: int) -> None:
    """What each workflow leaves: every site answered what it was asked."""
    names = [f"site-{i}" for i in range(1, sites + 1)]
    run = result.run_dir
    if workflow == "evaluate":
        doc = json.loads((run / "evaluation.json").read_text())
        assert sorted(doc["sites"]) == names and "accuracy" in doc["aggregated"], doc
        return
    if workflow == "cross_site_eval":
        doc = json.loads((run / "cross_site_eval.json").read_text())
        assert doc["models"] == ["global", *names] and doc["not_submitted"] == {}, doc
        for model in doc["models"]:
            assert sorted(doc["results"][model]) == names, doc
        return
    rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    if workflow == "fedbuff":
        assert all(sum(r["contributions"].values()) == 2 for r in rows), rows
    else:
        assert all(sorted(r["sites"]) == names for r in rows), rows
    assert (run / "models" / "global_final.safetensors").is_file()


@pytest.mark.parametrize("workflow", ["scaffold", "fedprox", "cross_site_eval"])
@pytest.mark.skipif(RUNNABLE["pt"] is not None, reason="needs PyTorch (the [pt] extra)")
def test_the_pt_template_runs_the_helpers_workflows(workflow: str, tmp_path: Path) -> None:
    made = new_job(f"pt-{workflow}", framework="pt", workflow=workflow, parent=tmp_path)
    _shorter(made.folder, workflow)
    result = run_simulation(made.folder, 2, tmp_path / "runs", threads=2)
    assert result.ok, result.failure_summary()
    _ran(result, workflow, 2)
    if workflow == "scaffold":
        # Each site kept its c_i for the next round, as the helper does.
        kept = list((result.run_dir / "site_state").glob("*/scaffold_c_i.safetensors"))
        assert len(kept) == 2, kept
