"""``check_job``: the checks a submit makes, every problem at once, and never
fewer than ``parse_job_spec`` finds."""

from __future__ import annotations

import copy
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.errors import JobValidationError
from shoal.jobs import check_job, pack_job, parse_job_spec
from shoal.jobs.check import spec_problems

from .conftest import JOB_YML, make_job

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

BROKEN_YML = """\
name: "bad name!"
min_clients: 0
workflow:
  name: fedavg
  num_rounds: 3
  colour: blue
client:
  script: trian.py
server:
  model: "nomodule:build"
start_timeout_s: -1
extra: 1
"""

#: What a submit of BROKEN_YML's job would be told, one section at a time.
BROKEN_PROBLEMS = [
    "job.yml: extra: unknown key (known: name, min_clients, sites, workflow, client, "
    "server, resources, start_timeout_s, rejoin_grace_s, filters, tracking)",
    "job.yml: name: required, [A-Za-z0-9][A-Za-z0-9._-]{0,63}, got 'bad name!'",
    "job.yml: min_clients: required integer in 1..10000, got 0",
    "job.yml: workflow.colour: unknown fedavg parameter (known: aggregator, evaluate_after, "
    "keep_models, krum_byzantine, max_num_examples, multi_krum_m, num_rounds, "
    "round_timeout_s, sample_fraction, seed, trim_fraction)",
    "job.yml: client.script: 'trian.py' not found in app/",
    "job.yml: server.model: hook 'nomodule:build': module 'nomodule' not found in app/ "
    "(expected app/nomodule.py)",
    "job.yml: start_timeout_s: must be a number > 0, got -1",
]


@pytest.mark.parametrize("example", ["hello-numpy", "hello-tf2"])
def test_the_examples_pass_with_a_one_line_summary(example: str) -> None:
    report = check_job(EXAMPLES / example)
    assert report.ok and report.problems == () and report.spec is not None
    assert report.spec.name == example
    summary = report.summary()
    assert "\n" not in summary
    assert summary.startswith(f"{EXAMPLES / example}: OK: job {example!r}, fedavg (num_rounds ")


def test_a_broken_folder_lists_every_problem_in_submits_words(tmp_path: Path) -> None:
    job = make_job(tmp_path / "broken", BROKEN_YML)
    report = check_job(job)
    assert not report.ok and report.spec is None
    assert list(report.problems) == BROKEN_PROBLEMS
    # The first is what a submit (load_job_spec) stops at.
    with pytest.raises(JobValidationError) as info:
        parse_job_spec(yaml.safe_load(BROKEN_YML), job / "app")
    assert str(info.value) == BROKEN_PROBLEMS[0]


def _valid() -> dict[str, Any]:
    doc = yaml.safe_load(JOB_YML)
    assert isinstance(doc, dict)
    return doc


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    target = doc
    for key in parents:
        target = target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return doc


_DELETE = object()

# One fault each, in every section and in the checks on the whole job.
SINGLE_FAULTS = [
    ("name", "-x"),
    ("min_clients", "2"),
    ("sites", ["site-1", "site-1"]),
    ("sites", ["site-1"]),  # fewer than min_clients
    ("workflow.name", "fedsgd"),  # not a registered workflow
    ("workflow.num_rounds", 0),
    ("workflow", _DELETE),
    ("client.script", "../train.py"),
    ("client.args", "--epochs 2"),
    ("client.env", {"LD_PRELOAD": "/tmp/x.so"}),
    ("client.env", {"PYTHONPATH": "/tmp"}),
    ("server.initial_weights", "model:weights"),  # with model: not both
    ("server.model", _DELETE),  # fedavg needs an initial model: the workflow's check
    ("server", {"model": None}),
    ("resources", [1]),
    ("start_timeout_s", float("inf")),
    ("start_timeout_s", 10**9),
    ("client.config", {"total_rounds": 9}),  # reserved for the task's own meta
    ("filters", {"result_out": ["nosuchfilter"]}),
    ("filters", {"result_out": ["nomodule:Clip"]}),
    ("filters", {"everywhere": []}),
    ("colour", "blue"),  # unknown top-level key
]


@pytest.mark.parametrize(("path", "value"), SINGLE_FAULTS)
def test_one_fault_gives_exactly_what_parse_job_spec_raises(
    job_dir: Path, path: str, value: Any
) -> None:
    doc = _set(_valid(), path, value)
    with pytest.raises(JobValidationError) as info:
        parse_job_spec(doc, job_dir / "app")
    assert spec_problems(doc, job_dir / "app") == [str(info.value)]


def test_problems_of_different_sections_are_all_listed(job_dir: Path) -> None:
    doc = _valid()
    for path, value in SINGLE_FAULTS[:1] + SINGLE_FAULTS[5:6] + SINGLE_FAULTS[9:10]:
        doc = _set(doc, path, value)
    problems = spec_problems(doc, job_dir / "app")
    assert [p.split(":")[1].strip() for p in problems] == [
        "name",
        "workflow.num_rounds",
        "client.env.LD_PRELOAD",
    ]


def test_whole_document_bounds_stop_everything_else(job_dir: Path) -> None:
    doc = _set(_valid(), "name", "x" * 20_000)
    doc["min_clients"] = 0
    assert spec_problems(doc, job_dir / "app") == [
        "job.yml: name: string of 20000 characters, more than 16384"
    ]
    assert spec_problems(["not", "a", "mapping"], job_dir / "app") == [
        "job.yml: must be a mapping of settings"
    ]


def test_the_workflows_own_check_runs_beside_other_problems(job_dir: Path) -> None:
    doc = _set(_set(_valid(), "server.model", _DELETE), "min_clients", 0)
    problems = spec_problems(doc, job_dir / "app")
    assert problems[0].startswith("job.yml: min_clients:")
    assert problems[1].startswith("job.yml: server: fedavg needs server.model")


def test_project_sites_are_checked_as_the_server_does(job_dir: Path) -> None:
    assert check_job(job_dir, project_sites=["site-1", "site-2", "site-3"]).ok
    report = check_job(job_dir, project_sites=["site-1"])
    assert report.problems == ("job.yml: sites: site-2 not in the project (project sites: site-1)",)


def test_a_zip_is_checked_as_the_server_unpacks_it(job_dir: Path, tmp_path: Path) -> None:
    archive = pack_job(job_dir, tmp_path / "job.zip")
    assert check_job(archive).ok
    hostile = tmp_path / "hostile.zip"
    with zipfile.ZipFile(hostile, "w") as zf:
        zf.writestr("job.yml", JOB_YML)
        zf.writestr("../escape.py", "x = 1\n")
    report = check_job(hostile)
    assert len(report.problems) == 1 and "'..'" in report.problems[0]


def test_a_folder_is_packed_as_submit_job_packs_it(job_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("x")
    (job_dir / "app" / "data.txt").symlink_to(outside)
    assert check_job(job_dir).problems == (
        f"app/data.txt: is a link to {outside}, outside the job",
    )


def test_what_cannot_be_read_is_one_problem(tmp_path: Path) -> None:
    assert check_job(tmp_path / "nope").problems == (
        f"{tmp_path / 'nope'}: no such job folder or archive",
    )
    (tmp_path / "notes.txt").write_text("hi")
    assert check_job(tmp_path / "notes.txt").problems == (
        f"{tmp_path / 'notes.txt'}: not a job folder or a zip archive",
    )
    job = make_job(tmp_path / "dup", JOB_YML + "name: again\n")
    assert check_job(job).problems == ("job.yml: name: key appears more than once",)
