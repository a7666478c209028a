"""The cross-site evaluation matrix as a job stores it: ``run/cross_site_eval.json``.

Rows are models (the global model, then each site's own local model), columns
the sites that evaluated them, each cell one site's metrics of one model::

    {
      "global_model": "final",                 # "initial", "final" or "app/<file>"
      "models": ["global", "site-1", "site-2"],  # rows; "global" is the server's model
      "sites": ["site-1", "site-2"],             # columns
      "results": {"global": {"site-1": {"num_examples": 64, "metrics": {"loss": 0.12}}}},
      "missing": {"site-2": {"site-1": "no answer within 600 s"}},
      "not_submitted": {"site-3": "no answer within 600 s"}
    }

``missing`` says why a cell is empty, ``not_submitted`` why a site's model
has no row. The ``cross_site_eval`` workflow (and a round workflow's
``evaluate_after`` phase) rewrites the file after each model's evaluation;
the admin service reads it for ``show_stats``. The run folder is writable by
the job's own server hooks, so a reader trusts nothing in it:
:func:`check_matrix` keeps what has this shape and drops everything else.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["FILE_NAME", "GLOBAL", "MAX_BYTES", "check_matrix", "global_label", "read_matrix"]

#: The file's name in the job's run folder.
FILE_NAME = "cross_site_eval.json"
#: The row of the global model.
GLOBAL = "global"
#: Largest file a reader loads (10,000 cells of a few metrics each fit).
MAX_BYTES = 8 * 1024 * 1024
#: Longest name or reason kept.
_MAX_TEXT = 1024


def global_label(sites: list[str] | tuple[str, ...]) -> str:
    """The global model's row name: ``"global"``, unless a site has that name."""
    return GLOBAL if GLOBAL not in sites else f"{GLOBAL} (server)"


def _texts(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v[:_MAX_TEXT] for v in value if isinstance(v, str)]


def _reasons(value: Any, known: set[str]) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {
        k: v[:_MAX_TEXT]
        for k, v in value.items()
        if isinstance(k, str) and k in known and isinstance(v, str)
    }


def _cell(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, Mapping):
        return None
    n = value.get("num_examples")
    metrics = value.get("metrics")
    if isinstance(n, bool) or not isinstance(n, int) or not isinstance(metrics, Mapping):
        return None
    return {
        "num_examples": n,
        "metrics": {
            str(k)[:_MAX_TEXT]: float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        },
    }


def check_matrix(doc: Any) -> dict[str, Any]:
    """``doc`` reduced to the matrix's shape (see the module docstring): rows
    and columns are lists of names, a cell names a known row and column and
    holds an integer ``num_examples`` and finite metrics; anything else is
    left out. ValueError when ``doc`` is not a matrix at all."""
    if not isinstance(doc, Mapping):
        raise ValueError("not a JSON object")
    models, sites = _texts(doc.get("models")), _texts(doc.get("sites"))
    if not models or not sites:
        raise ValueError("'models' and 'sites' must be non-empty lists of names")
    rows, columns = set(models), set(sites)
    results: dict[str, dict[str, Any]] = {}
    raw = doc.get("results")
    for model, row in raw.items() if isinstance(raw, Mapping) else ():
        if model not in rows or not isinstance(row, Mapping):
            continue
        cells = {s: c for s, v in row.items() if s in columns and (c := _cell(v)) is not None}
        if cells:
            results[model] = cells
    missing: dict[str, dict[str, str]] = {}
    raw = doc.get("missing")
    for model, row in raw.items() if isinstance(raw, Mapping) else ():
        if model in rows and (reasons := _reasons(row, columns)):
            missing[model] = reasons
    source = doc.get("global_model")
    return {
        "global_model": source[:_MAX_TEXT] if isinstance(source, str) else None,
        "models": models,
        "sites": sites,
        "results": results,
        "missing": missing,
        "not_submitted": _reasons(doc.get("not_submitted"), columns),
    }


def read_matrix(path: Path) -> dict[str, Any] | None:
    """The matrix stored at ``path``, reduced by :func:`check_matrix`; None
    when there is no such file. ValueError when it is not a plain file of at
    most :data:`MAX_BYTES` holding a matrix (a link is not followed: the file
    is the job's to write, the reader's files are not the job's to read)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"cannot open it: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a plain file")
        if info.st_size > MAX_BYTES:
            raise ValueError(f"{info.st_size} bytes, more than {MAX_BYTES}")
        data = f.read(MAX_BYTES + 1)
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    return check_matrix(doc)
