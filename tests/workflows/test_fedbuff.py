"""FedBuff's arithmetic, against numbers computed by hand from the paper's
Algorithm 1 (Nguyen et al., AISTATS 2022), through the fake communicator's
virtual clock: site ``a`` answers every 1 s with ``+1``, site ``b`` every
3 s with ``+4``, K = 2, server_lr = 1.

    t=0  both get version 0
    t=1  a (v0, tau 0, s 1)            buffer 1
    t=2  a (v0, tau 0, s 1)            buffer 2        -> v1 = 0 + 2/2 = 1
    t=3  b (v0, tau 1, s 1/sqrt 2)     buffer 4/sqrt 2
    t=3  a (v1, tau 0, s 1)            buffer 1 + 2.83 -> v2 = 1 + (1 + 4/sqrt 2)/2
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shoal.arrays import load_arrays
from shoal.errors import JobFailedError, JobValidationError
from shoal.filters import FilterSpec
from shoal.jobs import ClientAppSpec, JobSpec, ServerAppSpec, WorkflowSpec
from shoal.workflows import WorkflowContext, check_spec, get_workflow, parse_params
from shoal.workflows.api import TaskResult
from shoal.workflows.fedbuff import FedBuffParams, staleness_weight

from .fakes import FakeComm, SiteFn, shift

MODEL_PY = """\
import numpy as np

def initial():
    return {"w": np.zeros(2, np.float32), "step": np.array(7, np.int64)}
"""


def _ctx(tmp_path: Path, comm: FakeComm, **params: Any) -> WorkflowContext:
    app = tmp_path / "app"
    app.mkdir(exist_ok=True)
    (app / "model.py").write_text(MODEL_PY)
    spec = JobSpec(
        name="t",
        min_clients=2,
        workflow=WorkflowSpec(name="fedbuff", params={}),
        client=ClientAppSpec(script="train.py"),
        server=ServerAppSpec(initial_weights="model:initial"),
    )
    return WorkflowContext(
        job_id="job-1",
        spec=spec,
        params={"num_versions": 2, "buffer_size": 2, **params},
        app_dir=app,
        run_dir=tmp_path / "run",
        comm=comm,
    )


def _comm(tmp_path: Path, sites: dict[str, SiteFn] | None = None) -> FakeComm:
    (tmp_path / "results").mkdir(exist_ok=True)
    return FakeComm(
        site_fns=sites or {"a": shift(1.0, 10, loss=1.0), "b": shift(4.0, 30, loss=3.0)},
        results_dir=tmp_path / "results",
        durations={"a": 1.0, "b": 3.0},
    )


def _final(tmp_path: Path) -> dict[str, np.ndarray]:
    return load_arrays(tmp_path / "run" / "models" / "global_final.safetensors")


def _metrics(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_staleness_weights_are_the_papers() -> None:
    # s(tau) = 1/sqrt(1 + tau), the paper's choice; constant is 1.
    assert staleness_weight(0) == 1.0
    assert staleness_weight(3) == 0.5
    assert staleness_weight(8) == pytest.approx(1 / 3)
    assert staleness_weight(1, exponent=1.0) == 0.5
    assert staleness_weight(99, kind="constant") == 1.0


def test_each_version_is_the_buffers_weighted_mean_update(tmp_path: Path) -> None:
    comm = _comm(tmp_path)
    get_workflow("fedbuff")(_ctx(tmp_path, comm))
    final = _final(tmp_path)
    expected = 1 + (1 + 4 / math.sqrt(2)) / 2
    np.testing.assert_allclose(final["w"], [expected, expected], rtol=1e-6)
    assert int(final["step"]) == 7  # not a float: the global model's value stays
    v1 = load_arrays(tmp_path / "run" / "models" / "global_round_0001.safetensors")
    np.testing.assert_array_equal(v1["w"], [1.0, 1.0])
    # The first task goes to everyone, then one task per answer, to that site
    # only, on the newest model, never closing the other sites' tasks.
    assert [(c["sites"], c["round"], c["supersede"]) for c in comm.scatters] == [
        (["a", "b"], 1, "targets"),
        (["a"], 1, "targets"),
        (["a"], 2, "targets"),
        (["b"], 2, "targets"),
    ]
    assert comm.scatters[2]["meta"]["model_version"] == 1
    assert comm.finished
    lines = _metrics(tmp_path)
    assert [m["round"] for m in lines] == [1, 2]
    assert lines[0]["contributions"] == {"a": 2}
    assert lines[1]["contributions"] == {"a": 1, "b": 1}
    assert lines[1]["staleness"] == {"mean": 0.5, "max": 1}
    # Metrics are example-weighted over the buffer's results: (1*10 + 3*30)/40.
    assert lines[1]["aggregated"]["loss"] == pytest.approx(2.5)
    done = [r for r in comm.reports if r.get("status") == "round_done"]
    assert [r["round"] for r in done] == [1, 2]
    assert done[-1]["contributions"] == {"a": 3, "b": 1}
    ckpt = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert ckpt["round"] == 2


def test_constant_staleness_and_server_lr(tmp_path: Path) -> None:
    get_workflow("fedbuff")(_ctx(tmp_path, _comm(tmp_path), staleness="constant", server_lr=0.5))
    # v1 = 0 + 0.5 * 2/2 = 0.5; v2 = 0.5 + 0.5 * (4 + 1)/2 = 1.75
    np.testing.assert_allclose(_final(tmp_path)["w"], [1.75, 1.75])


def test_too_stale_results_are_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    get_workflow("fedbuff")(_ctx(tmp_path, _comm(tmp_path), max_staleness=0))
    # b's result (tau 1) is dropped; a's two results on v1 make v2 = 1 + 2/2.
    np.testing.assert_allclose(_final(tmp_path)["w"], [2.0, 2.0])
    assert "dropped the result of b: trained on version 0, 1 version(s) old" in caplog.text
    assert _metrics(tmp_path)[1]["contributions"] == {"a": 2}


def test_diff_results_are_the_update_itself(tmp_path: Path) -> None:
    def diff(value: float) -> SiteFn:
        def fn(g: dict[str, np.ndarray], rnd: int) -> Any:
            return {k: np.full_like(v, value) for k, v in g.items()}, 5, {}

        return fn

    comm = _comm(tmp_path, {"a": diff(1.0), "b": diff(4.0)})
    comm.diff_sites = {"a", "b"}
    get_workflow("fedbuff")(_ctx(tmp_path, comm))
    expected = 1 + (1 + 4 / math.sqrt(2)) / 2
    np.testing.assert_allclose(_final(tmp_path)["w"], [expected, expected], rtol=1e-6)


def test_versions_held_by_open_tasks_stay_on_disk_and_a_run_resumes(tmp_path: Path) -> None:
    # b holds old versions for 3 s while a publishes new ones: the fake reads
    # each task's model file when the site answers, so one removed too early
    # fails the run.
    get_workflow("fedbuff")(_ctx(tmp_path, _comm(tmp_path), num_versions=6))
    models = tmp_path / "run" / "models"
    kept = sorted(p.name for p in models.glob("global_round_*"))
    assert "global_round_0000.safetensors" in kept and "global_round_0006.safetensors" in kept
    assert len(kept) < 7  # versions nobody holds are gone
    before = _final(tmp_path)["w"].copy()
    # Asked for more versions, the same run folder resumes after version 6.
    comm = _comm(tmp_path)
    get_workflow("fedbuff")(_ctx(tmp_path, comm, num_versions=7))
    assert [m["round"] for m in _metrics(tmp_path)] == [1, 2, 3, 4, 5, 6, 7]
    assert comm.scatters[0]["meta"]["model_version"] == 6
    assert (_final(tmp_path)["w"] > before).all()


def test_no_result_fails_the_job(tmp_path: Path) -> None:
    comm = _comm(tmp_path, {"a": lambda g, r: None, "b": lambda g, r: None})
    with pytest.raises(JobFailedError, match="0 of 2 version"):
        get_workflow("fedbuff")(_ctx(tmp_path, comm))
    assert comm.finished


def test_params() -> None:
    p = parse_params("fedbuff", {"num_versions": 5})
    assert p == FedBuffParams(num_versions=5)
    assert (p.buffer_size, p.staleness, p.staleness_exponent) == (3, "polynomial", 0.5)
    with pytest.raises(JobValidationError, match="workflow.staleness"):
        parse_params("fedbuff", {"num_versions": 5, "staleness": "hinge"})
    with pytest.raises(JobValidationError, match="workflow.num_versions"):
        parse_params("fedbuff", {})


class _CrashAfter(FakeComm):
    """A server that dies after ``results`` results reached the workflow."""

    results: int = 0

    def stream(self, *, timeout: float) -> Iterator[TaskResult]:
        for n, result in enumerate(super().stream(timeout=timeout), start=1):
            yield result
            if n == self.results:
                raise RuntimeError("simulated crash")


def test_a_restart_mid_version_keeps_the_results_already_in_the_buffer(tmp_path: Path) -> None:
    # Three results reach the workflow: a, a (-> v1), then b on v0 (tau 1),
    # folded into v2's buffer and saved; the server dies before a's next one.
    (tmp_path / "results").mkdir()
    crashing = _CrashAfter(
        site_fns={"a": shift(1.0, 10, loss=1.0), "b": shift(4.0, 30, loss=3.0)},
        results_dir=tmp_path / "results",
        durations={"a": 1.0, "b": 3.0},
    )
    crashing.results = 3
    with pytest.raises(RuntimeError, match="simulated crash"):
        get_workflow("fedbuff")(_ctx(tmp_path, crashing))
    saved = tmp_path / "run" / "server_state" / "round_0001.safetensors"
    assert saved.exists()
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["round"] == 1

    # Resumed at v1 with b's update still in the buffer: a's first answer on
    # v1 completes it, and v2 is the uninterrupted run's 1 + (1 + 4/sqrt 2)/2.
    comm = _comm(tmp_path)
    get_workflow("fedbuff")(_ctx(tmp_path, comm))
    expected = 1 + (1 + 4 / math.sqrt(2)) / 2
    np.testing.assert_allclose(_final(tmp_path)["w"], [expected, expected], rtol=1e-6)
    last = _metrics(tmp_path)[-1]
    assert last["round"] == 2
    assert last["contributions"] == {"a": 1, "b": 1}
    assert last["staleness"] == {"mean": 0.5, "max": 1}
    assert last["aggregated"]["loss"] == pytest.approx(2.5)  # b's metrics came back too
    assert not saved.exists()  # folded into v2: the buffer file goes


def test_a_saved_buffer_of_another_version_or_model_is_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "results").mkdir()
    crashing = _CrashAfter(
        site_fns={"a": shift(1.0, 10), "b": shift(4.0, 30)},
        results_dir=tmp_path / "results",
        durations={"a": 1.0, "b": 3.0},
    )
    crashing.results = 3
    with pytest.raises(RuntimeError):
        get_workflow("fedbuff")(_ctx(tmp_path, crashing))
    saved = tmp_path / "run" / "server_state" / "round_0001.safetensors"
    saved.write_bytes(saved.read_bytes()[:-3])  # torn (a disk that lied about fsync)
    caplog.set_level(logging.WARNING)
    get_workflow("fedbuff")(_ctx(tmp_path, _comm(tmp_path)))
    assert "ignoring the saved buffer" in caplog.text
    # Without b's update: a's two answers on v1 make v2 = 1 + 2/2.
    np.testing.assert_allclose(_final(tmp_path)["w"], [2.0, 2.0])


PROBE_PY = """\
import dataclasses

class Shift:
    \"\"\"result_in: one more on every float weight, and what it saw as metrics.\"\"\"

    def __call__(self, model, ctx):
        assert ctx.point == "result_in" and ctx.task == "train"
        params = {
            k: (v + 1).astype(v.dtype) if v.dtype.kind == "f" else v
            for k, v in model.params.items()
        }
        metrics = {
            **model.metrics,
            "ref": float(ctx.reference["w"][0]),
            "round": float(ctx.round),
        }
        return dataclasses.replace(model, params=params, metrics=metrics)
"""


def _filtered_ctx(tmp_path: Path, comm: FakeComm, **filters: Any) -> WorkflowContext:
    ctx = _ctx(tmp_path, comm)
    (ctx.app_dir / "probe.py").write_text(PROBE_PY)
    ctx.spec = dataclasses.replace(ctx.spec, filters=filters)
    return ctx


def test_result_in_filters_run_on_every_result(tmp_path: Path) -> None:
    comm = _comm(tmp_path)
    ctx = _filtered_ctx(tmp_path, comm, result_in=(FilterSpec(name="probe:Shift"),))
    check_spec("fedbuff", ctx.spec)  # accepted at submit
    get_workflow("fedbuff")(ctx)
    # The filter adds 1 to what each site sent: a's +1 arrives as +2, b's +4 as +5.
    # v1 = 0 + (2 + 2)/2 = 2; then b (on v0, tau 1, weight 1/sqrt 2) and a (on v1).
    expected = 2 + (2 + 5 / math.sqrt(2)) / 2
    np.testing.assert_allclose(_final(tmp_path)["w"], [expected, expected], rtol=1e-6)
    lines = _metrics(tmp_path)
    # Its reference is the version the site was sent, its round that task's.
    seen = {(m["ref"], m["round"]) for line in lines for m in line["sites"].values()}
    assert seen == {(0.0, 1.0), (2.0, 2.0)}, lines


def test_model_out_filters_are_refused_at_submit(tmp_path: Path) -> None:
    ctx = _filtered_ctx(tmp_path, _comm(tmp_path), model_out=(FilterSpec(name="identity"),))
    with pytest.raises(JobValidationError, match="filters.model_out: fedbuff does not apply"):
        check_spec("fedbuff", ctx.spec)
