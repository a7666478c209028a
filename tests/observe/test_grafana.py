"""deploy/grafana/shoal.json queries only metrics the daemons export, and all of them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shoal.observe.metrics import METRIC_NAMES

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "shoal.json"
_NAME = re.compile(r"\bshoal_[a-z_]+")
#: What Prometheus adds to a counter's or a histogram's name.
_SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def _exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from _exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _exprs(item)


def _base(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_dashboard_queries_exported_metrics_only_and_all_of_them() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = list(_exprs(dashboard))
    assert exprs, "no queries found"
    queried = {_base(m) for e in exprs for m in _NAME.findall(e)}
    unknown = queried - METRIC_NAMES
    assert not unknown, f"the dashboard queries metrics no daemon exports: {sorted(unknown)}"
    unused = METRIC_NAMES - queried
    assert not unused, f"metrics the dashboard never shows: {sorted(unused)}"


def test_dashboard_is_importable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()
