"""The ``tracking:`` section's parsing, the trackers' fan-out, and a site's
``metrics_may_leave`` policy (pure logic; the real stores are in
test_tracking_sim.py and tests/integration/test_tracking.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.errors import ConfigError, JobValidationError, WorkflowSuspended
from shoal.jobs.spec import _tracking, parse_tracking
from shoal.jobs.tracking import MlflowSpec, TrackingSpec, WandbSpec
from shoal.observe.tracking import (
    PRIVATE_META,
    Trackers,
    _store_uri,
    job_params,
    metrics_may_leave,
    private_sites,
)


def parse(text: str) -> TrackingSpec:
    return _tracking(yaml.safe_load(text))


def test_a_full_section_parses_and_survives_its_stored_form() -> None:
    spec = parse(
        """
        site_metrics: site
        tensorboard: false
        mlflow: {tracking_uri: "http://mlflow:5000", experiment: e, run_name: r,
                 tags: {team: fl}, log_model: false}
        wandb: {project: p, entity: me, mode: offline, dir: wb, tags: [a, b]}
        """
    )
    assert spec == TrackingSpec(
        site_metrics="site",
        tensorboard=False,
        mlflow=MlflowSpec(
            tracking_uri="http://mlflow:5000",
            experiment="e",
            run_name="r",
            tags={"team": "fl"},
            log_model=False,
        ),
        wandb=WandbSpec(project="p", entity="me", mode="offline", dir="wb", tags=("a", "b")),
    )
    assert parse_tracking(spec.to_dict()) == spec
    assert parse("{}") == TrackingSpec() == _tracking(None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mlfow: {}", "tracking.mlfow: unknown key"),
        ("site_metrics: everywhere", "tracking.site_metrics: one of server, site, none"),
        ("tensorboard: maybe", "tracking.tensorboard: must be true or false"),
        ("mlflow: {experiment: e}", "tracking.mlflow.tracking_uri: required"),
        ("mlflow: {tracking_uri: x, colour: red}", "tracking.mlflow.colour: unknown key"),
        (
            "mlflow: {tracking_uri: 'https://bob:secret@mlflow.example'}",
            "holds credentials",
        ),
        ("wandb: {mode: offline}", "tracking.wandb.project: required"),
        ("wandb: {project: p, mode: sometimes}", "tracking.wandb.mode: online or offline"),
        ("wandb: {project: p, tags: a}", "tracking.wandb.tags: must be a list"),
        ("mlflow: [x]", "tracking.mlflow: must be a mapping"),
    ],
)
def test_bad_sections_are_refused_by_name(text: str, message: str) -> None:
    with pytest.raises(JobValidationError, match=message.replace(".", r"\.")):
        parse(text)


def test_relative_stores_live_in_the_base_folder(tmp_path: Path) -> None:
    assert _store_uri("mlflow.db", tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert _store_uri("sqlite:///rel/x.db", tmp_path) == f"sqlite:///{tmp_path / 'rel' / 'x.db'}"
    assert _store_uri("sqlite:////abs/x.db", tmp_path) == "sqlite:////abs/x.db"
    assert _store_uri("http://host:5000", tmp_path) == "http://host:5000"


class Recorder:
    """A tracker that records, or raises on the call named ``fail``."""

    def __init__(self, name: str, *, local: bool = False, fail: str = "") -> None:
        self.name, self.local, self.fail = name, local, fail
        self.calls: list[tuple[str, Any]] = []

    def _do(self, what: str, arg: Any) -> None:
        if what == self.fail:
            raise OSError(f"{self.name} is down")
        self.calls.append((what, arg))

    def log_params(self, params: Any) -> None:
        self._do("params", dict(params))

    def log_metrics(self, metrics: Any, step: int) -> None:
        self._do("metrics", (step, dict(metrics)))

    def log_model(self, path: Path) -> None:
        self._do("model", path)

    def close(self, status: str) -> None:
        self._do("close", status)


def test_a_failing_tracker_is_dropped_and_the_others_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good, bad = Recorder("good"), Recorder("bad", fail="metrics")
    with caplog.at_level(logging.WARNING), Trackers([good, bad]) as tb:
        tb.add_scalars({"server/acc": 0.5}, step=1)
        tb.add_scalars({"server/acc": 0.6}, step=2)
        tb.log_model(Path("m"))
    assert good.calls == [
        ("metrics", (1, {"server/acc": 0.5})),
        ("metrics", (2, {"server/acc": 0.6})),
        ("model", Path("m")),
        ("close", "FINISHED"),
    ]
    assert bad.calls == [("close", "FAILED")]
    assert caplog.text.count("no more tracking to bad for this job") == 1


@pytest.mark.parametrize(
    ("error", "status"), [(WorkflowSuspended(3), "KILLED"), (RuntimeError("x"), "FAILED")]
)
def test_runs_end_with_how_the_job_ended(error: BaseException, status: str) -> None:
    tracker = Recorder("t")
    with pytest.raises(type(error)), Trackers([tracker]):
        raise error
    assert tracker.calls == [("close", status)]


def test_site_metrics_reach_remote_trackers_only_when_allowed() -> None:
    values = {"server/acc": 1.0, "sites/site-1/acc": 0.9, "sites/site-2/acc": 0.8}
    for site_metrics, private, expected in (
        ("server", (), set(values)),
        ("server", ("site-2",), {"server/acc", "sites/site-1/acc"}),
        ("site", (), {"server/acc"}),
        ("none", (), {"server/acc"}),
    ):
        local, remote = Recorder("tb", local=True), Recorder("mlflow")
        Trackers([local, remote], site_metrics=site_metrics).add_scalars(
            values, step=1, private=private
        )
        assert set(local.calls[0][1][1]) == set(values)
        assert set(remote.calls[0][1][1]) == expected


def test_private_sites_come_from_the_results_meta() -> None:
    class Result:
        def __init__(self, site: str, meta: dict[str, Any]) -> None:
            self.site, self.meta = site, meta

    results = [Result("site-1", {}), Result("site-2", {PRIVATE_META: True})]
    assert private_sites(results) == {"site-2"}


def test_metrics_may_leave_reads_the_site_policy(tmp_path: Path) -> None:
    assert metrics_may_leave(tmp_path) is True  # no local/policy.yml
    (tmp_path / "local").mkdir()
    policy = tmp_path / "local" / "policy.yml"
    policy.write_text("code: {allow: any}\n")
    assert metrics_may_leave(tmp_path) is True
    policy.write_text("other: 1\n")  # one parser for the whole file: a typo is refused
    with pytest.raises(ConfigError, match="other: unknown key"):
        metrics_may_leave(tmp_path)
    policy.write_text("metrics_may_leave: false\n")
    assert metrics_may_leave(tmp_path) is False
    policy.write_text("metrics_may_leave: 'no'\n")
    with pytest.raises(ConfigError, match="must be true or false"):
        metrics_may_leave(tmp_path)


def test_job_params_flatten_the_workflow_and_client_config() -> None:
    class Spec:
        name = "j"
        min_clients = 2

        class workflow:  # noqa: N801
            name = "fedavg"
            params = {"num_rounds": 3, "server_opt": {"lr": 0.1}}

        class client:  # noqa: N801
            config = {"lr": 0.01, "layers": [8, 4]}

    params = job_params(Spec, "abc", ["site-1", "site-2"])
    assert params == {
        "job.name": "j",
        "job.id": "abc",
        "workflow": "fedavg",
        "workflow.num_rounds": "3",
        "workflow.server_opt.lr": "0.1",
        "min_clients": "2",
        "sites": "site-1,site-2",
        "client.config.lr": "0.01",
        "client.config.layers": "[8, 4]",
    }
