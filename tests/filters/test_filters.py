"""Filter configuration, order and chains (pure logic)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from shoal.client.model import FLModel
from shoal.errors import ConfigError, JobValidationError
from shoal.filters import (
    FilterSpec,
    build_chain,
    parse_filters,
    site_order,
    specs_from_json,
    specs_to_json,
)
from shoal.filters.local import local_filters


def test_entries_by_name_or_with_args() -> None:
    got = parse_filters(
        {"result_out": ["identity", {"filter": "mod:Make", "args": {"x": 1}}]}, where="filters"
    )
    assert got == {
        "result_out": (
            FilterSpec("identity"),
            FilterSpec("mod:Make", {"x": 1}),
        )
    }
    assert specs_from_json(specs_to_json(got["result_out"])) == got["result_out"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"nowhere": []}, "filters.nowhere: unknown filter point"),
        ({"result_out": "identity"}, "filters.result_out: must be a list"),
        ({"result_out": ["nosuch"]}, r"filters.result_out\[0\]: unknown filter .nosuch."),
        ({"result_out": [{"filter": "identity", "x": 1}]}, r"filters.result_out\[0\].x: unknown"),
        ({"result_out": [{"filter": "identity", "args": [1]}]}, r"\[0\].args: must be a mapping"),
        ({"result_out": [{"args": {}}]}, "filter name required"),
        ({"result_out": [3]}, "a filter name or"),
        (["identity"], "filters: must be a mapping"),
    ],
)
def test_bad_entries_are_named(raw: object, message: str) -> None:
    with pytest.raises(JobValidationError, match=message):
        parse_filters(raw, where="filters")


def test_a_site_file_has_site_points_only(tmp_path: Path) -> None:
    (tmp_path / "local").mkdir()
    path = tmp_path / "local" / "filters.yml"
    assert local_filters(tmp_path) == {}
    path.write_text("task_in: [identity]\n")
    assert local_filters(tmp_path) == {"task_in": (FilterSpec("identity", source="site"),)}
    path.write_text("result_in: [identity]\n")
    with pytest.raises(ConfigError, match="unknown filter point"):
        local_filters(tmp_path)
    path.write_text("a: &x [1]\nb: *x\n")
    with pytest.raises(ConfigError, match="filters.yml"):
        local_filters(tmp_path)


def test_site_filters_sit_nearest_the_outside() -> None:
    site, job = (FilterSpec("s", source="site"),), (FilterSpec("j"),)
    assert site_order("task_in", site, job) == (*site, *job)
    assert site_order("result_out", site, job) == (*job, *site)


class _Add:
    def __init__(self, amount: float) -> None:
        self.amount = amount

    def __call__(self, model: FLModel, ctx: object) -> FLModel:
        return dataclasses.replace(model, params={"w": model.params["w"] + self.amount})


def test_a_chain_runs_in_order_and_names_a_failing_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    import shoal.filters as filters

    monkeypatch.setitem(filters.BUILTIN, "add", _Add)
    monkeypatch.setitem(filters.BUILTIN, "broken", lambda: lambda model, ctx: 1 / 0)
    monkeypatch.setitem(filters.BUILTIN, "wrong", lambda: lambda model, ctx: {"w": 1})
    chain = build_chain(
        "result_out",
        [FilterSpec("add", {"amount": 1.0}), FilterSpec("add", {"amount": 2.0}, source="site")],
        app_dir=None,
    )
    assert chain.labels == ["job:add", "site:add"]
    out = chain.apply(
        FLModel(params={"w": np.zeros(2)}), job_id="j", site="s", round=1, task="train"
    )
    np.testing.assert_array_equal(out.params["w"], [3.0, 3.0])
    broken = build_chain("result_out", [FilterSpec("broken")], app_dir=None)
    with pytest.raises(ConfigError, match="result_out filter job:broken failed: ZeroDivisionError"):
        broken.apply(FLModel(), job_id="j", site="s", round=1, task="train")
    wrong = build_chain("result_out", [FilterSpec("wrong")], app_dir=None)
    with pytest.raises(ConfigError, match="returned dict, not an FLModel"):
        wrong.apply(FLModel(), job_id="j", site="s", round=1, task="train")
    with pytest.raises(ConfigError, match="building it with"):
        build_chain("result_out", [FilterSpec("add", {"nope": 1})], app_dir=None)
    with pytest.raises(ConfigError, match="site filter 'no_such_mod:X' cannot be loaded"):
        build_chain("result_out", [FilterSpec("no_such_mod:X", source="site")], app_dir=None)
    assert not build_chain("result_out", [], app_dir=None)
