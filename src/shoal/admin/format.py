"""Plain-text rendering for the admin console: boxed tables, durations, details.

The table style is the one NVIDIA FLARE operators already read: a rule of
dashes, a header row, a rule, the rows, a closing rule::

    >>> print(format_table(["JOB ID", "STATUS"], [["c897", "RUNNING"]]))
    --------------------
    | JOB ID | STATUS  |
    --------------------
    | c897   | RUNNING |
    --------------------

Nothing here talks to a server; every function takes an answer and returns a
string, so the console, the CLI and the tests share one rendering. An answer is
a typed value from :mod:`shoal.admin.results` or the plain JSON data it stands
for: either way what is rendered is the reply as the server sent it
(``to_dict()``), so ``list_jobs -d`` and ``sys_info`` also show fields this
version of the client does not know, and partial data (a test's, an older
server's) still renders.

The tables and the demo's progress bar are written here rather than with
``rich``: docs/architecture.md ("Console output") says why.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

__all__ = [
    "format_ago",
    "format_cross_site",
    "format_details",
    "format_duration",
    "format_job_detail",
    "format_jobs",
    "format_log",
    "format_errors",
    "format_seconds",
    "format_stats",
    "format_status",
    "format_table",
    "format_time",
    "printable",
]


class Reply(Protocol):
    """A typed admin answer (:mod:`shoal.admin.results`): it gives back its JSON data."""

    def to_dict(self) -> dict[str, Any]: ...


#: What the views below render: a typed answer or the JSON data it stands for.
Answer = Mapping[str, Any] | Reply

#: Shown in a cell whose value is unknown or not applicable yet.
MISSING = "-"


#: C0 controls but tab and newline, DEL, and C1 controls: what a terminal may
#: act on (move the cursor, clear the screen, set the title, ...).
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    r"""``text`` safe to print to a terminal: control characters but newline and
    tab shown as ``\xNN``. Logs, error lines and names come from sites and job
    code, and an escape sequence printed raw acts on the admin's terminal.

    >>> print(printable("\x1b]0;pwned\x07ok\r\n"))
    \x1b]0;pwned\x07ok\x0d
    <BLANKLINE>
    """
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _data(answer: Answer) -> Mapping[str, Any]:
    """A typed answer as the JSON data it was decoded from; plain data as it is."""
    return answer if isinstance(answer, Mapping) else answer.to_dict()


def _cell(value: Any) -> str:
    if value is None:
        return MISSING
    # A newline inside a cell would break the box; tables are one line per row.
    return printable(str(value).replace("\r", " ").replace("\n", " "))


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A boxed table; ``None`` cells print as ``-``. Rows shorter than the header are padded."""
    body = [[_cell(v) for v in row] for row in rows]
    ncols = max([len(headers)] + [len(r) for r in body])
    header = list(headers) + [""] * (ncols - len(headers))
    body = [r + [""] * (ncols - len(r)) for r in body]
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(ncols)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "-" * len(line(header))
    out = [rule, line(header), rule]
    out.extend(line(r) for r in body)
    if body:
        out.append(rule)
    return "\n".join(out)


def format_duration(seconds: float | None) -> str:
    """``H:MM:SS.ffffff`` as NVFlare's RUN DURATION column shows it; hours may pass 24.

    >>> format_duration(104.335456)
    '0:01:44.335456'
    """
    if seconds is None:
        return MISSING
    sign = "-" if seconds < 0 else ""
    micros = round(abs(seconds) * 1_000_000)
    secs, micros = divmod(micros, 1_000_000)
    mins, secs = divmod(secs, 60)
    hours, mins = divmod(mins, 60)
    return f"{sign}{hours}:{mins:02d}:{secs:02d}.{micros:06d}"


def format_ago(seconds: float | None) -> str:
    """A short "how long ago": ``0.4s ago``, ``3m 12s ago``, ``2h 5m ago``."""
    if seconds is None:
        return MISSING
    if seconds < 60:
        return f"{seconds:.1f}s ago"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60}s ago"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60}m ago"
    return f"{whole // 86400}d {whole % 86400 // 3600}h ago"


def _short(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value, default=str, sort_keys=True)


def format_details(data: Answer, *, indent: int = 0) -> str:
    """``key: value`` lines with aligned values; nested mappings are indented.

    Lists of scalars print comma-separated; anything deeper prints as compact JSON.
    """
    plain = _data(data)
    if not plain:
        return " " * indent + "(none)"
    width = max(len(str(k)) for k in plain) + 1
    pad = " " * indent
    out: list[str] = []
    for key, value in plain.items():
        label = f"{key}:".ljust(width)
        if isinstance(value, Mapping) and value:
            out.append(f"{pad}{key}:")
            out.append(format_details(value, indent=indent + 2))
        elif isinstance(value, list) and all(
            isinstance(v, (str, int, float, bool)) or v is None for v in value
        ):
            out.append(f"{pad}{label} {', '.join(_cell(v) for v in value) or MISSING}")
        else:
            out.append(f"{pad}{label} {MISSING if value is None else _short(value)}")
    return "\n".join(out)


# --- views of AdminSession answers --------------------------------------------------

JOB_HEADERS = ("JOB ID", "NAME", "STATUS", "SUBMIT TIME", "RUN DURATION")


def format_jobs(jobs: Sequence[Answer]) -> str:
    """The ``list_jobs`` table: JOB ID | NAME | STATUS | SUBMIT TIME | RUN DURATION."""
    rows = [
        [
            j.get("job_id"),
            j.get("name"),
            j.get("status"),
            j.get("submit_time"),
            format_duration(j.get("run_duration_s")),
        ]
        for j in map(_data, jobs)
    ]
    table = format_table(JOB_HEADERS, rows)
    return table if rows else table + "\nNo jobs."


def format_job_detail(meta: Answer) -> str:
    """``list_jobs -d ID``: the job's fields, round progress and duration made readable."""
    plain = _data(meta)
    shown: dict[str, Any] = {}
    for key in ("job_id", "name", "status", "submit_time"):
        if key in plain:
            shown[key] = plain[key]
    if "run_duration_s" in plain:
        shown["run_duration"] = format_duration(plain.get("run_duration_s"))
    if plain.get("num_rounds") is not None or plain.get("current_round") is not None:
        shown["round"] = f"{_cell(plain.get('current_round'))}/{_cell(plain.get('num_rounds'))}"
    for key, value in plain.items():
        if key == "signature":
            # Who signed it, not the document and its certificate.
            doc = value.get("document") if isinstance(value, Mapping) else None
            shown["signed_by"] = (
                f"{doc.get('submitter')} at {doc.get('signed_at')}"
                if isinstance(doc, Mapping)
                else "not signed (sites refuse it)"
            )
        elif key not in shown and key not in ("run_duration_s", "current_round", "num_rounds"):
            shown[key] = value
    return format_details(shown)


def format_status(status: Answer, *, target: str | None = None) -> str:
    """``check_status``: a server line, then a table of sites (or just one of the two).

    ``target`` is ``"server"``, ``"client"`` or ``None`` for both.
    """
    plain = _data(status)
    out: list[str] = []
    if target in (None, "server"):
        server = plain.get("server") or {}
        jobs = server.get("running_jobs") or []
        out.append(
            f"Server: {_cell(server.get('name'))}  status: {_cell(server.get('status'))}"
            f"  started: {_cell(server.get('start_time'))}"
            f"  uptime: {format_duration(server.get('uptime_s'))}"
        )
        out.append(
            f"Running jobs: {len(jobs)}" + (f" ({', '.join(map(str, jobs))})" if jobs else "")
        )
    if target in (None, "client"):
        sites = plain.get("sites") or []
        connected = sum(1 for s in sites if s.get("connected"))
        out.append(f"Registered sites: {len(sites)}, connected: {connected}")
        rows = [
            [
                s.get("name"),
                "yes" if s.get("connected") else "no",
                format_ago(s.get("last_heartbeat_s_ago")),
                ", ".join(map(str, s.get("running_jobs") or [])) or MISSING,
            ]
            for s in sites
        ]
        if rows:
            out.append(format_table(("SITE", "CONNECTED", "LAST HEARTBEAT", "RUNNING JOBS"), rows))
    warnings = list((plain.get("server") or {}).get("certificate_warnings") or [])
    for s in plain.get("sites") or []:
        warnings += s.get("certificate_warnings") or []
    out.extend(f"WARNING: {printable(str(w))}" for w in warnings)
    return "\n".join(out)


#: Fields of a ``metrics.jsonl`` row (docs/jobs.md) that ``show_stats`` lays out
#: itself; any other field gets a column of its own.
_ROUND_FIELDS = frozenset(
    {"round", "started", "duration_s", "num_examples", "sites", "missing", "aggregated", "server"}
)
#: Sites named in a "no result" line before the rest are counted.
_MISSING_SHOWN = 5


def format_stats(stats: Answer) -> str:
    """``show_stats``: round progress, a table of sites, then one row per round.

    A round's row holds when its task went out (local time), how long it took,
    how many sites answered, and its metrics to 4 significant digits: the
    server's evaluation of the new global model (``GLOBAL``) and the sites'
    mean weighted by examples (``MEAN``). Each site's own metrics per round
    stay in ``--json`` and ``metrics.jsonl``.
    """
    plain = _data(stats)
    out = [f"Round: {_cell(plain.get('current_round'))}/{_cell(plain.get('num_rounds'))}"]
    sites = plain.get("sites") or {}
    if sites:
        rows = [
            [name, s.get("state"), s.get("round"), _metrics(s.get("metrics"))]
            for name, s in sites.items()
        ]
        out.append(format_table(("SITE", "STATE", "ROUND", "METRICS"), rows))
    rounds = [r for r in plain.get("metrics") or [] if isinstance(r, Mapping)]
    if rounds:
        out.extend(_rounds_table(rounds))
    matrix = plain.get("cross_site_eval")
    if isinstance(matrix, Mapping):
        out.append(format_cross_site(matrix))
    return "\n".join(out)


#: Lines saying why a cell or a row is empty, before the rest are counted.
_REASONS_SHOWN = 10


def format_cross_site(matrix: Answer) -> str:
    """The cross-site evaluation matrix (``show_stats``): per metric, a table
    with a row per model (the global model first) and a column per site that
    evaluated it, then why a model or a cell is missing.

    >>> print(format_cross_site({"global_model": "final", "models": ["global", "site-1"],
    ...     "sites": ["site-1", "site-2"], "results": {
    ...         "global": {"site-1": {"num_examples": 64, "metrics": {"loss": 0.25}},
    ...                    "site-2": {"num_examples": 32, "metrics": {"loss": 0.5}}},
    ...         "site-1": {"site-1": {"num_examples": 64, "metrics": {"loss": 0.125}}}},
    ...     "missing": {"site-1": {"site-2": "no answer within 600 s"}}}))
    Cross-site evaluation: rows are models (global: the final global model), columns the sites that evaluated them
    loss:
    ----------------------------
    | MODEL  | site-1 | site-2 |
    ----------------------------
    | global | 0.2500 | 0.5000 |
    | site-1 | 0.1250 | -      |
    ----------------------------
    site-1's model at site-2: no answer within 600 s
    """
    plain = _data(matrix)
    models = [m for m in plain.get("models") or [] if isinstance(m, str)]
    sites = [s for s in plain.get("sites") or [] if isinstance(s, str)]
    results = plain.get("results") if isinstance(plain.get("results"), Mapping) else {}
    source = plain.get("global_model")
    origin = f"the {source} global model" if source in ("initial", "final") else source
    out = [
        "Cross-site evaluation: rows are models"
        + (f" (global: {_cell(origin)})" if origin else "")
        + ", columns the sites that evaluated them"
    ]

    def cell(model: str, site: str) -> Mapping[str, Any]:
        row = results.get(model) if isinstance(results, Mapping) else None
        value = row.get(site) if isinstance(row, Mapping) else None
        metrics = value.get("metrics") if isinstance(value, Mapping) else None
        return metrics if isinstance(metrics, Mapping) else {}

    names: dict[str, None] = {}
    for model in models:
        for site in sites:
            names.update(dict.fromkeys(map(str, cell(model, site))))
    for name in names:
        out.append(f"{name}:")
        rows = [
            [
                model,
                *(
                    _metric(cell(model, site)[name]) if name in cell(model, site) else None
                    for site in sites
                ),
            ]
            for model in models
        ]
        out.append(format_table(["MODEL", *sites], rows))
    if not names:
        out.append("No results yet.")
    reasons: list[str] = []
    not_submitted = plain.get("not_submitted")
    if isinstance(not_submitted, Mapping):
        reasons += [f"no model from {site}: {why}" for site, why in not_submitted.items()]
    missing = plain.get("missing")
    if isinstance(missing, Mapping):
        for model, row in missing.items():
            if isinstance(row, Mapping):
                reasons += [f"{model}'s model at {site}: {why}" for site, why in row.items()]
    out.extend(_cell(r) for r in reasons[:_REASONS_SHOWN])
    if len(reasons) > _REASONS_SHOWN:
        out.append(f"and {len(reasons) - _REASONS_SHOWN} more (--json shows them all)")
    return "\n".join(out)


def _rounds_table(rounds: Sequence[Mapping[str, Any]]) -> list[str]:
    def keys_of(field: str) -> list[str]:
        seen: dict[str, None] = {}
        for r in rounds:
            value = r.get(field)
            if isinstance(value, Mapping):
                seen.update(dict.fromkeys(map(str, value)))
        return list(seen)

    global_keys, mean_keys = keys_of("server"), keys_of("aggregated")
    other: dict[str, None] = {}
    for r in rounds:
        other.update(dict.fromkeys(k for k in r if k not in _ROUND_FIELDS))
    columns: list[tuple[str, Any]] = [
        ("ROUND", lambda r: r.get("round")),
        ("STARTED", lambda r: format_time(r.get("started"))),
        ("DURATION", lambda r: format_seconds(r.get("duration_s"))),
        ("SITES", _answered),
        ("EXAMPLES", lambda r: r.get("num_examples")),
    ]
    columns += [(f"GLOBAL {k.upper()}", _nested("server", k)) for k in global_keys]
    columns += [(f"MEAN {k.upper()}", _nested("aggregated", k)) for k in mean_keys]
    columns += [(k.upper(), lambda r, k=k: _value(r[k]) if k in r else None) for k in other]
    # A column no round fills (an older server's rows) is left out.
    columns = [(h, get) for h, get in columns if any(get(r) is not None for r in rounds)]
    out = [format_table([h for h, _ in columns], [[get(r) for _, get in columns] for r in rounds])]
    notes = []
    if global_keys:
        notes.append("GLOBAL: the server's evaluation of the new global model")
    if mean_keys:
        notes.append("MEAN: the sites' metrics weighted by their examples")
    if notes:
        out.append("; ".join(notes))
    for r in rounds:
        missing = r.get("missing")
        if isinstance(missing, list) and missing:
            names = ", ".join(_cell(m) for m in missing[:_MISSING_SHOWN])
            more = len(missing) - _MISSING_SHOWN
            out.append(
                f"round {_cell(r.get('round'))}: no result from {names}"
                + (f" and {more} more" if more > 0 else "")
            )
    return out


def _answered(row: Mapping[str, Any]) -> str | None:
    sites, missing = row.get("sites"), row.get("missing")
    if not isinstance(sites, Mapping):
        return None
    asked = len(sites) + (len(missing) if isinstance(missing, list) else 0)
    return f"{len(sites)}/{asked}"


def _nested(field: str, key: str) -> Any:
    def get(row: Mapping[str, Any]) -> str | None:
        values = row.get(field)
        if not isinstance(values, Mapping) or key not in values:
            return None
        return _value(values[key])

    return get


def format_time(timestamp: Any) -> str | None:
    """A Unix time as local ``YYYY-MM-DD HH:MM:SS`` (``1716457624.49`` is
    ``2024-05-23 09:47:04`` in UTC); ``None`` as ``None``, anything else as text."""
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)):
        return None if timestamp is None else _cell(timestamp)
    try:
        return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return _cell(timestamp)


def format_seconds(seconds: Any) -> str | None:
    """A duration in seconds, to the millisecond below 10 s: ``0.004s``, ``12.3s``, ``3600.0s``."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return None if seconds is None else _cell(seconds)
    return f"{seconds:.3f}s" if abs(seconds) < 10 else f"{seconds:.1f}s"


def _value(value: Any) -> str:
    """A metric or any other value: floats to 4 significant digits, mappings as ``k=v``."""
    if isinstance(value, Mapping):
        return _metrics(value)
    return _metric(value)


def _metric(value: Any) -> str:
    """Floats to 4 significant digits, trailing zeros kept so a column lines
    up (``0.9470``, ``0.03215``, ``1.235e+06``); anything else as it is."""
    if not isinstance(value, float):
        return _cell(value)
    return f"{value:#.4g}".rstrip(".")


def _metrics(metrics: Any) -> str:
    if not metrics:
        return MISSING
    if isinstance(metrics, Mapping):
        return ", ".join(f"{k}={_metric(v)}" for k, v in metrics.items())
    return _cell(metrics)


def format_errors(errors: Answer) -> str:
    """``show_errors``: one block per target that reported errors, or ``No errors.``."""
    plain = _data(errors)
    out: list[str] = []
    for target, items in plain.items():
        if not items:
            continue
        entries = items if isinstance(items, list) else [items]
        out.append(f"{target}:")
        out.extend(f"  {e if isinstance(e, str) else _short(e)}" for e in entries)
    return printable("\n".join(out)) if out else "No errors."


def format_log(text: str) -> str:
    """``cat_log``: the text without a trailing newline (print adds one), its
    control characters escaped (:func:`printable`)."""
    return printable(text.rstrip("\n")) if text else "(log is empty)"


#: Fields every audit line has, shown in their own columns.
_AUDIT_COLUMNS = ("seq", "time", "event", "by", "prev")


def format_audit(answer: Answer) -> str:
    """The audit events as a table (one line each, the event's own fields
    as ``key=value``), then the trail's head and, if asked, the verdict."""
    data = _data(answer)
    rows = []
    for e in data.get("events") or []:
        detail = " ".join(
            f"{k}={_short(v)}" for k, v in sorted(e.items()) if k not in _AUDIT_COLUMNS
        )
        rows.append([e.get("seq"), e.get("time"), e.get("event"), e.get("by"), detail])
    out = [format_table(["Seq", "Time", "Event", "By", "Detail"], rows)]
    out.append(f"head {data.get('head')} ({data.get('path')})")
    verdict = data.get("verify")
    if verdict:
        out.append(
            f"verify: OK, {verdict.get('lines')} line(s)"
            if verdict.get("ok")
            else f"verify: FAILED: {printable(str(verdict.get('problem')))}"
        )
    return "\n".join(out)
