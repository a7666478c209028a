"""FedAvg with a fake in-memory Communicator."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shoal.arrays import load_arrays, save_arrays
from shoal.errors import JobFailedError, JobValidationError
from shoal.jobs import ClientAppSpec, JobSpec, ServerAppSpec, WorkflowSpec
from shoal.tensorboard import read_scalars
from shoal.workflows import WorkflowContext, get_workflow, parse_params
from shoal.workflows.fedavg import FedAvgParams, select_sites
from shoal.workflows.store import RoundStore

from .fakes import FakeComm, SiteFn, shift

MODEL_PY = """\
import numpy as np

def initial():
    return {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32),
            "step": np.array(0, np.int64)}

def build_model():
    return initial()
"""

EVALUATE_PY = """\
def evaluate(params, round):
    return {"mean_w": float(params["w"].mean()), "round": round}
"""


def _app(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    app.mkdir(exist_ok=True)
    (app / "model.py").write_text(MODEL_PY)
    (app / "evaluate.py").write_text(EVALUATE_PY)
    return app


def _spec(min_clients: int = 2, *, model: bool = False, evaluate: bool = False) -> JobSpec:
    return JobSpec(
        name="t",
        min_clients=min_clients,
        workflow=WorkflowSpec(name="fedavg", params={}),
        client=ClientAppSpec(script="train.py"),
        server=ServerAppSpec(
            model="model:build_model" if model else None,
            initial_weights=None if model else "model:initial",
            evaluate="evaluate:evaluate" if evaluate else None,
        ),
    )


def _ctx(
    tmp_path: Path,
    comm: FakeComm,
    *,
    spec: JobSpec | None = None,
    run_dir: str = "run",
    **params: Any,
) -> WorkflowContext:
    return WorkflowContext(
        job_id="job-1",
        spec=spec or _spec(),
        params={"num_rounds": 3, **params},
        app_dir=_app(tmp_path),
        run_dir=tmp_path / run_dir,
        comm=comm,
    )


def _comm(tmp_path: Path, sites: dict[str, SiteFn], **kw: Any) -> FakeComm:
    (tmp_path / "results").mkdir(exist_ok=True)
    return FakeComm(site_fns=sites, results_dir=tmp_path / "results", **kw)


def test_weighted_average_over_rounds(tmp_path: Path) -> None:
    comm = _comm(
        tmp_path,
        {"site-1": shift(1.0, 100, loss=1.0), "site-2": shift(3.0, 300, loss=3.0)},
    )
    ctx = _ctx(tmp_path, comm, spec=_spec(evaluate=True))
    get_workflow("fedavg")(ctx)
    run = tmp_path / "run"

    # Each round: mean shift = (1*100 + 3*300) / 400 = 2.5.
    final = load_arrays(run / "models" / "global_final.safetensors")
    np.testing.assert_array_equal(final["w"], np.full((2, 3), 7.5, np.float32))
    assert final["w"].dtype == np.float32
    # Integer arrays: the heaviest site's value (0 + 3 each round).
    assert int(final["step"]) == 9
    for k, expected in [(0, 0.0), (1, 2.5), (2, 5.0), (3, 7.5)]:
        m = load_arrays(run / "models" / f"global_round_{k:04d}.safetensors")
        np.testing.assert_array_equal(m["b"], np.full(3, expected, np.float32))

    # Scatter: every round, the previous round's model, with round meta.
    assert [s["round"] for s in comm.scatters] == [1, 2, 3]
    assert comm.scatters[0]["weights_path"].name == "global_round_0000.safetensors"
    assert comm.scatters[2]["weights_path"].name == "global_round_0002.safetensors"
    assert comm.scatters[1]["meta"] == {"current_round": 2, "total_rounds": 3}
    assert comm.scatters[0]["sites"] == ["site-1", "site-2"]
    assert comm.finished

    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [1, 2, 3]
    assert lines[0]["num_examples"] == 400
    assert lines[0]["sites"] == {"site-1": {"loss": 1.0}, "site-2": {"loss": 3.0}}
    assert lines[0]["aggregated"] == {"loss": 2.5}
    assert lines[2]["server"] == {"mean_w": 7.5, "round": 3.0}
    assert lines[0]["duration_s"] >= 0
    # Bytes moved: the model file out to both sites, the arrays of each site's result back.
    model = run / "models" / "global_round_0000.safetensors"
    assert lines[0]["bytes_sent"] == 2 * model.stat().st_size
    result = save_arrays(tmp_path / "result.safetensors", load_arrays(model))
    assert lines[0]["bytes_received"] == 2 * result.stat().st_size

    ckpt = json.loads((run / "checkpoint.json").read_text())
    assert ckpt["round"] == 3
    assert ckpt["model"] == "models/global_round_0003.safetensors"

    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    scalars = {(s.tag, s.step): s.value for s in read_scalars(events[0])}
    assert scalars[("server/mean_w", 3)] == 7.5
    assert scalars[("aggregated/loss", 1)] == 2.5
    assert scalars[("sites/site-2/loss", 2)] == 3.0
    assert any(r.get("status") == "round_done" and r["round"] == 3 for r in comm.reports)


def test_site_dropping_below_min_clients_fails(tmp_path: Path) -> None:
    ok = shift(1.0, 10)

    def flaky(g: dict[str, np.ndarray], rnd: int) -> Any:
        return None if rnd == 2 else ok(g, rnd)

    comm = _comm(tmp_path, {"site-1": ok, "site-2": flaky})
    with pytest.raises(
        JobFailedError,
        match=r"round 2: only 1 of the required min_clients=2 sites returned a valid "
        r"result \(missing: site-2\)",
    ):
        get_workflow("fedavg")(_ctx(tmp_path, comm))
    # Round 2 was never half-committed: the checkpoint still says round 1.
    run = tmp_path / "run"
    assert json.loads((run / "checkpoint.json").read_text())["round"] == 1
    assert not (run / "models" / "global_round_0002.safetensors").exists()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert comm.finished


def test_too_few_sites_at_start(tmp_path: Path) -> None:
    comm = _comm(tmp_path, {"site-1": shift(1.0, 10)})
    with pytest.raises(JobFailedError, match="only 1 site"):
        get_workflow("fedavg")(_ctx(tmp_path, comm))


def _bad_shape(g: dict[str, np.ndarray], rnd: int) -> Any:
    out = dict(g)
    out["w"] = np.zeros((3, 2), np.float32)
    return out, 1000, {}


def _nan(g: dict[str, np.ndarray], rnd: int) -> Any:
    out = dict(g)
    out["b"] = np.array([np.nan, 0, 0], np.float32)
    return out, 1000, {}


def _extra(g: dict[str, np.ndarray], rnd: int) -> Any:
    return {**g, "extra": np.zeros(1, np.float32)}, 1000, {}


def _wrong_dtype(g: dict[str, np.ndarray], rnd: int) -> Any:
    return {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in g.items()}, 1000, {}


def _no_examples(g: dict[str, np.ndarray], rnd: int) -> Any:
    return shift(100.0, 0)(g, rnd)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (_bad_shape, "shape"),
        (_nan, "NaN"),
        (_extra, "not in the model"),
        (_wrong_dtype, "dtype"),
        (_no_examples, "num_examples"),
    ],
)
def test_invalid_result_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, bad: SiteFn, reason: str
) -> None:
    comm = _comm(tmp_path, {"site-1": shift(1.0, 100), "site-2": shift(3.0, 100), "site-3": bad})
    with caplog.at_level(logging.WARNING):
        get_workflow("fedavg")(_ctx(tmp_path, comm, num_rounds=1))
    final = load_arrays(tmp_path / "run" / "models" / "global_final.safetensors")
    np.testing.assert_array_equal(final["w"], np.full((2, 3), 2.0, np.float32))
    assert any("site-3" in r.message and reason in r.message for r in caplog.records)
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert line["missing"] == ["site-3"]


def test_invalid_results_below_min_clients_name_the_reason(tmp_path: Path) -> None:
    comm = _comm(tmp_path, {"site-1": shift(1.0, 100), "site-2": _nan})
    with pytest.raises(JobFailedError, match=r"missing: site-2 \(array 'b' contains NaN"):
        get_workflow("fedavg")(_ctx(tmp_path, comm))


def _sites() -> dict[str, SiteFn]:
    def site(scale: float, n: int) -> SiteFn:
        # Depends on the global model non-linearly, so the path matters.
        def fn(g: dict[str, np.ndarray], rnd: int) -> Any:
            out = {k: (v * 0.5 + scale * rnd).astype(v.dtype) for k, v in g.items()}
            return out, n + rnd, {"loss": scale / rnd}

        return fn

    return {"site-1": site(1.0, 10), "site-2": site(2.0, 30), "site-3": site(-1.0, 20)}


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path: Path) -> None:
    whole = _comm(tmp_path, _sites())
    get_workflow("fedavg")(_ctx(tmp_path, whole, run_dir="whole", num_rounds=4))
    expected = load_arrays(tmp_path / "whole" / "models" / "global_final.safetensors")

    crashing = _comm(tmp_path, _sites(), crash_in_round=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        get_workflow("fedavg")(_ctx(tmp_path, crashing, run_dir="resumed", num_rounds=4))
    run = tmp_path / "resumed"
    assert json.loads((run / "checkpoint.json").read_text())["round"] == 2

    again = _comm(tmp_path, _sites())
    get_workflow("fedavg")(_ctx(tmp_path, again, run_dir="resumed", num_rounds=4))
    assert [s["round"] for s in again.scatters] == [3, 4]
    assert again.scatters[0]["weights_path"].name == "global_round_0002.safetensors"
    got = load_arrays(run / "models" / "global_final.safetensors")
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
    rounds = [json.loads(x)["round"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2, 3, 4]


def test_metrics_of_an_uncheckpointed_round_are_dropped_on_resume(tmp_path: Path) -> None:
    comm = _comm(tmp_path, _sites())
    get_workflow("fedavg")(_ctx(tmp_path, comm, num_rounds=2))
    run = tmp_path / "run"
    # Pretend the server died after writing round 2's metrics but before its checkpoint.
    ckpt = json.loads((run / "checkpoint.json").read_text())
    from shoal.workflows.store import RoundStore

    store = RoundStore(run)
    store.save_checkpoint(1, store.model_path(1))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"round": 2, "torn')
    again = _comm(tmp_path, _sites())
    get_workflow("fedavg")(_ctx(tmp_path, again, num_rounds=2))
    assert [s["round"] for s in again.scatters] == [2]
    rounds = [json.loads(x)["round"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2]
    assert json.loads((run / "checkpoint.json").read_text()) == ckpt


def test_corrupt_checkpoint_falls_back_to_latest_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    crashing = _comm(tmp_path, _sites(), crash_in_round=3)
    with pytest.raises(RuntimeError):
        get_workflow("fedavg")(_ctx(tmp_path, crashing, num_rounds=3))
    run = tmp_path / "run"
    (run / "checkpoint.json").write_text("{not json")
    # A torn later model file must be skipped as well.
    (run / "models" / "global_round_0003.safetensors").write_bytes(b"\x10\0\0")
    again = _comm(tmp_path, _sites())
    with caplog.at_level(logging.WARNING):
        get_workflow("fedavg")(_ctx(tmp_path, again, num_rounds=3))
    assert [s["round"] for s in again.scatters] == [3]
    assert any("unusable" in r.message for r in caplog.records)


def test_tampered_checkpoint_model_is_not_trusted(tmp_path: Path) -> None:
    from shoal.arrays import save_arrays
    from shoal.workflows.store import RoundStore

    comm = _comm(tmp_path, _sites())
    get_workflow("fedavg")(_ctx(tmp_path, comm, num_rounds=2))
    store = RoundStore(tmp_path / "run")
    save_arrays(store.model_path(2), {"w": np.ones(1)})  # checksum no longer matches
    save_arrays(store.model_path(2), load_arrays(store.model_path(1)))
    ckpt = store.load_checkpoint()
    assert ckpt is not None
    # The fallback picks the latest readable model file (round 2 is readable).
    assert ckpt.round == 2


def test_the_previous_model_is_filled_again_when_nothing_else_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shoal.aggregation import factory

    reused: list[bool] = []

    class Recording(factory.WeightedMean):
        def __init__(self, reuse: Any = None) -> None:
            reused.append(reuse is not None)
            super().__init__(reuse=reuse)

    monkeypatch.setattr(factory, "WeightedMean", Recording)
    comm = _comm(tmp_path, {"site-1": shift(1.0, 100), "site-2": shift(3.0, 300)})
    get_workflow("fedavg")(_ctx(tmp_path, comm, num_rounds=4))
    assert reused == [True, True, True, True]
    # Filled again, the means are still right: each round adds 2.5 (weights 1:3).
    final = load_arrays(tmp_path / "run" / "models" / "global_final.safetensors")
    np.testing.assert_allclose(final["w"], np.full((2, 3), 10.0))


KEEPING_EVALUATE_PY = """\
import numpy as np

KEPT = []

def evaluate(params, round):
    # Keeps the model (odd rounds) or a view of one array (even rounds), and
    # checks that nothing it kept has changed since.
    for kept, copy in KEPT:
        got = kept if isinstance(kept, dict) else {"view": kept}
        for name, arr in copy.items():
            if not np.array_equal(got[name], arr):
                raise AssertionError(f"round {round}: a kept model changed ({name})")
    kept = params if round % 2 else params["w"][1:]
    copy = {k: np.array(v) for k, v in params.items()} if round % 2 else {"view": np.array(kept)}
    KEPT.append((kept, copy))
    return {}
"""


def test_a_model_a_hook_kept_is_never_filled_again(tmp_path: Path) -> None:
    comm = _comm(tmp_path, {"site-1": shift(1.0, 100), "site-2": shift(3.0, 300)})
    ctx = _ctx(tmp_path, comm, spec=_spec(evaluate=True), num_rounds=5)
    (ctx.app_dir / "evaluate.py").write_text(KEEPING_EVALUATE_PY)
    get_workflow("fedavg")(ctx)
    final = load_arrays(tmp_path / "run" / "models" / "global_final.safetensors")
    np.testing.assert_allclose(final["w"], np.full((2, 3), 12.5))


def test_each_new_model_is_written_over_an_aggregated_result(tmp_path: Path) -> None:
    comm = _comm(tmp_path, {"site-1": shift(1.0, 100), "site-2": shift(3.0, 300)})
    inodes: list[int] = []
    real = comm.gather

    def gather(task_id: str, *, timeout: float):  # type: ignore[no-untyped-def]
        for result in real(task_id, timeout=timeout):
            inodes.append(result.path.stat().st_ino)
            yield result

    comm.gather = gather  # type: ignore[method-assign]
    get_workflow("fedavg")(_ctx(tmp_path, comm, num_rounds=3, keep_models=0))
    models = tmp_path / "run" / "models"
    for k in (1, 2, 3):
        # The last result folded in each round became that round's model file.
        assert (models / f"global_round_{k:04d}.safetensors").stat().st_ino == inodes[2 * k - 1]
    # No spare is left behind (a failed run's neither, tests/faults/test_disk_full.py),
    # no result file either; the models read back right.
    assert sorted(p.name for p in models.iterdir() if p.name.startswith(".")) == []
    assert not [p for p in (tmp_path / "results").rglob("*") if p.is_file()]
    final = load_arrays(models / "global_final.safetensors")
    np.testing.assert_allclose(final["w"], np.full((2, 3), 7.5))
    from shoal.workflows.store import RoundStore

    assert RoundStore(tmp_path / "run").load_checkpoint() is not None


def test_checkpoint_of_an_earlier_build_with_a_sha256_is_honoured(tmp_path: Path) -> None:
    import hashlib

    from shoal import checksum
    from shoal.workflows.store import RoundStore

    comm = _comm(tmp_path, _sites())
    get_workflow("fedavg")(_ctx(tmp_path, comm, num_rounds=3))
    store = RoundStore(tmp_path / "run")
    model = store.model_path(2)
    legacy = {
        "round": 2,
        "model": model.relative_to(store.run_dir).as_posix(),
        "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
    }
    store.checkpoint_path.write_text(json.dumps(legacy))
    ckpt = RoundStore(store.run_dir).load_checkpoint()
    assert ckpt is not None and ckpt.round == 2
    assert ckpt.checksum == checksum.of_file(model)
    # A SHA-256 that does not match is refused like a checksum that does not.
    store.checkpoint_path.write_text(json.dumps({**legacy, "sha256": "0" * 64}))
    with pytest.raises(ValueError, match="does not match its sha256"):
        RoundStore(store.run_dir)._read_checkpoint()
    # What this build writes names its algorithm.
    store.save_checkpoint(2, model)
    doc = json.loads(store.checkpoint_path.read_text())
    assert doc["xxh3_128"] == checksum.of_file(model) and "sha256" not in doc


def test_model_hook_and_native_final(tmp_path: Path) -> None:
    comm = _comm(tmp_path, {"site-1": shift(1.0, 1), "site-2": shift(1.0, 1)})
    ctx = _ctx(tmp_path, comm, spec=_spec(model=True), num_rounds=2)
    get_workflow("fedavg")(ctx)
    final = load_arrays(tmp_path / "run" / "models" / "global_final.safetensors")
    np.testing.assert_array_equal(final["b"], np.full(3, 2.0, np.float32))


def test_hook_errors_are_clear(tmp_path: Path) -> None:
    comm = _comm(tmp_path, {"site-1": shift(1.0, 1), "site-2": shift(1.0, 1)})
    ctx = _ctx(tmp_path, comm)
    (ctx.app_dir / "model.py").write_text("def initial():\n    raise RuntimeError('boom')\n")
    with pytest.raises(
        JobFailedError,
        match=r"server.initial_weights hook 'model:initial' raised RuntimeError: boom",
    ):
        get_workflow("fedavg")(ctx)


def test_sample_fraction_is_seeded_and_respects_min_clients() -> None:
    sites = [f"site-{i}" for i in range(10)]
    a = select_sites(sites, 1, fraction=0.3, min_clients=2, seed=7)
    assert len(a) == 3 and a == sorted(a)
    assert a == select_sites(sites, 1, fraction=0.3, min_clients=2, seed=7)
    assert len(select_sites(sites, 1, fraction=0.05, min_clients=4, seed=7)) == 4
    assert select_sites(sites, 1, fraction=1.0, min_clients=2, seed=7) == sorted(sites)
    picks = {tuple(select_sites(sites, r, fraction=0.3, min_clients=2, seed=7)) for r in range(20)}
    assert len(picks) > 1


def test_sampled_rounds_ask_a_subset(tmp_path: Path) -> None:
    sites = {f"site-{i}": shift(1.0, 10) for i in range(6)}
    comm = _comm(tmp_path, sites)
    get_workflow("fedavg")(_ctx(tmp_path, comm, num_rounds=2, sample_fraction=0.5, seed=3))
    assert all(len(s["sites"]) == 3 for s in comm.scatters)


def test_params_parse() -> None:
    p = parse_params("fedavg", {"num_rounds": 2, "sample_fraction": 0.5, "seed": 1})
    assert p == FedAvgParams(num_rounds=2, round_timeout_s=600.0, sample_fraction=0.5, seed=1)
    with pytest.raises(
        JobValidationError, match=r"unknown workflow 'x' \(known: [^)]*\bfedavg\b[^)]*\)"
    ):
        parse_params("x", {})
    with pytest.raises(JobValidationError, match="num_rounds"):
        parse_params("fedavg", {})
    with pytest.raises(JobValidationError, match="seed"):
        parse_params("fedavg", {"num_rounds": 1, "seed": -1})
    with pytest.raises(JobValidationError, match="round_timeout_s"):
        parse_params("fedavg", {"num_rounds": 1, "round_timeout_s": "soon"})
    for bad in (-1, 1.5, True, "all"):
        with pytest.raises(JobValidationError, match="workflow.keep_models: must be an integer"):
            parse_params("fedavg", {"num_rounds": 1, "keep_models": bad})


@pytest.mark.parametrize(
    ("keep", "rounds_left"), [(2, [0, 4, 5]), (3, [0, 3, 4, 5]), (0, [0, 1, 2, 3, 4, 5])]
)
def test_only_the_last_keep_models_round_models_are_kept(
    tmp_path: Path, keep: int, rounds_left: list[int]
) -> None:
    comm = _comm(tmp_path, {"site-1": shift(1.0, 10), "site-2": shift(1.0, 10)})
    get_workflow("fedavg")(_ctx(tmp_path, comm, num_rounds=5, keep_models=keep))
    models = tmp_path / "run" / "models"
    names = sorted(p.name for p in models.iterdir())
    assert names == ["global_final.safetensors"] + [
        f"global_round_{k:04d}.safetensors" for k in rounds_left
    ]
    # Every round's task was still on disk when it went out, and what is
    # kept is what the checkpoint and a resume need.
    assert [s["weights_path"].name for s in comm.scatters] == [
        f"global_round_{k:04d}.safetensors" for k in range(5)
    ]
    ckpt = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert ckpt["model"] == "models/global_round_0005.safetensors"
    assert RoundStore(tmp_path / "run").load_checkpoint().round == 5  # type: ignore[union-attr]


class _FakeAdapter:
    name = "fake"
    suffix = ".fake"

    def get_weights(self, model: Any) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in model.items()}

    def set_weights(self, model: Any, params: Any) -> None:
        model.clear()
        model.update(params)

    def save(self, model: Any, path: Path) -> None:
        assert path.name.endswith(".fake")
        path.write_text(json.dumps({k: np.asarray(v).tolist() for k, v in model.items()}))


def test_native_final_model_saved_by_the_adapter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shoal.frameworks.adapter_for", lambda model: _FakeAdapter())
    comm = _comm(tmp_path, {"site-1": shift(1.0, 1), "site-2": shift(1.0, 1)})
    get_workflow("fedavg")(_ctx(tmp_path, comm, spec=_spec(model=True), num_rounds=1))
    models = tmp_path / "run" / "models"
    native = json.loads((models / "global_final.fake").read_text())
    assert native["b"] == [1.0, 1.0, 1.0]
    assert not any(p.name.startswith(".") for p in models.iterdir())


def test_a_round_is_committed_while_the_next_one_is_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round k's model is offered as round k+1's task as soon as it is written;
    its flush to disk, metrics and checkpoint follow, in that order, and the
    checkpoint never names a model before it is durable."""
    from shoal.workflows.store import RoundStore

    events: list[tuple[str, int]] = []
    sync, save = RoundStore.sync_model, RoundStore.save_checkpoint

    def traced_sync(self: RoundStore, path: Path) -> None:
        events.append(("sync", int(path.stem.rsplit("_", 1)[1])))
        sync(self, path)

    def traced_save(self: RoundStore, rnd: int, path: Path) -> Any:
        events.append(("checkpoint", rnd))
        return save(self, rnd, path)

    monkeypatch.setattr(RoundStore, "sync_model", traced_sync)
    monkeypatch.setattr(RoundStore, "save_checkpoint", traced_save)

    class TracedComm(FakeComm):
        def scatter(self, **kw: Any) -> str:
            events.append(("scatter", kw["round"]))
            return super().scatter(**kw)

    (tmp_path / "results").mkdir()
    comm = TracedComm(site_fns=_sites(), results_dir=tmp_path / "results")
    get_workflow("fedavg")(_ctx(tmp_path, comm, spec=_spec(evaluate=True), num_rounds=3))
    assert events == [
        ("checkpoint", 0),
        ("scatter", 1),
        ("scatter", 2),
        ("sync", 1),
        ("checkpoint", 1),
        ("scatter", 3),
        ("sync", 2),
        ("checkpoint", 2),
        ("sync", 3),
        ("checkpoint", 3),
    ]
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3]
    starts = [r["started"] for r in records]
    assert starts == sorted(starts)
    # Each round's report says it is done before the next says it is training.
    statuses = [(r["round"], r["status"]) for r in comm.reports]
    assert statuses == [
        (1, "training"),
        (1, "round_done"),
        (2, "training"),
        (2, "round_done"),
        (3, "training"),
        (3, "round_done"),
    ]
