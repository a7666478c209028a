"""What changed between two snapshots of a page's data: the patches the
dashboard pushes to a browser as server-sent events.

A snapshot is a JSON object (the federation, the job list, one job). The
browser receives the whole snapshot once, then only patches: keys whose value
changed are ``set``, keys gone are ``remove``\\ d, and a list that only grew
at its end (a job's metrics, one row per round) sends just the new items as
``append``. The page's script applies them exactly as :func:`apply_patch`::

    patch = diff(old, new)          # None when nothing changed
    assert apply_patch(old, patch) == new
    frame = sse_frame("patch", {"topic": "jobs", "patch": patch})
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["apply_patch", "diff", "sse_frame"]


def diff(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any] | None:
    """The patch that turns ``old`` into ``new``; None when they are equal.

    ``{"set": {key: value}, "append": {key: [items]}, "remove": [key]}``,
    each part present only when it has something.
    """
    if old is None:
        return {"set": dict(new)}
    set_: dict[str, Any] = {}
    append: dict[str, list[Any]] = {}
    for key, value in new.items():
        if key not in old:
            set_[key] = value
            continue
        before = old[key]
        if _same(before, value):
            continue
        if (
            isinstance(before, list)
            and isinstance(value, list)
            and len(value) > len(before)
            and _same(value[: len(before)], before)
        ):
            append[key] = value[len(before) :]
        else:
            set_[key] = value
    remove = [key for key in old if key not in new]
    patch: dict[str, Any] = {}
    if set_:
        patch["set"] = set_
    if append:
        patch["append"] = append
    if remove:
        patch["remove"] = remove
    return patch or None


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON: Python's ``True == 1`` and ``1 == 1.0`` are not, for a browser."""
    return a == b and json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def apply_patch(old: Mapping[str, Any] | None, patch: Mapping[str, Any]) -> dict[str, Any]:
    """``old`` with ``patch`` applied (a new object; ``old`` is not changed)."""
    out = dict(old or {})
    for key in patch.get("remove", ()):
        out.pop(key, None)
    out.update(patch.get("set", {}))
    for key, items in patch.get("append", {}).items():
        out[key] = [*out.get(key, []), *items]
    return out


def sse_frame(event: str, data: Any) -> str:
    """One server-sent event: its name and one line of JSON (JSON has no raw
    newlines, so the frame cannot be split or forged by a value in it)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
