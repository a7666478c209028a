"""A round progress bar for long waits: one updating line on a terminal,
plain lines (one per round) elsewhere, nothing but ANSI's erase-line.

    bar = RoundBar(sys.stderr)
    bar.update(round=3, total=5, metrics={"accuracy": 0.91}, status="RUNNING")
    bar.close()

On a terminal each update rewrites the line (``\\r`` and erase-line); into a
file or a pipe (CI logs, ``| tee``) a line is written only when the round or
the status changes, so a log holds one line per round and no control codes.
``rich`` would draw the same for ~100 ms more import time on every command.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import IO, Any

__all__ = ["RoundBar", "bar", "finite_numbers", "latest_metrics", "progress_line"]

#: Metrics shown on the line, at most (the rest stay in show_stats).
MAX_SHOWN = 4
_ERASE_LINE = "\r\x1b[2K"


def bar(done: int, total: int, width: int = 24) -> str:
    """``[#########---------------]``: ``done`` of ``total`` in ``width`` cells."""
    if total <= 0:
        return "[" + "-" * width + "]"
    filled = max(0, min(width, round(width * done / total)))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def latest_metrics(rows: Sequence[Mapping[str, Any]]) -> tuple[str, dict[str, float]]:
    """The last round's metrics from ``show_stats``'s rows (``metrics.jsonl``'s):
    the server's evaluation of the global model, else the sites' weighted mean;
    with ``"global"`` or ``"mean"`` saying which."""
    for row in reversed(rows):
        for key, label in (("server", "global"), ("aggregated", "mean")):
            found = finite_numbers(row.get(key))
            if found:
                return label, found
    return "", {}


def finite_numbers(value: Any) -> dict[str, float]:
    """The finite numbers of a mapping (``{}`` for anything else): what a
    metrics record holds that can be shown."""
    if not isinstance(value, Mapping):
        return {}
    return {
        str(k): float(v)
        for k, v in value.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def progress_line(
    *,
    round: int | None,
    total: int | None,
    metrics: Mapping[str, float] | None = None,
    label: str = "",
    status: str = "",
    width: int = 24,
) -> str:
    """One line: ``round 3/5 [#####...] 60% global accuracy=0.9100 (RUNNING)``."""
    parts = []
    if round is not None:
        parts.append(f"round {round}/{total}" if total else f"round {round}")
    if round is not None and total:
        parts.append(f"{bar(round, total, width)} {100 * round // total:3d}%")
    shown = list((metrics or {}).items())[:MAX_SHOWN]
    if shown:
        text = " ".join(f"{k}={v:.4g}" for k, v in shown)
        parts.append(f"{label} {text}" if label else text)
    if status:
        parts.append(f"({status})")
    return " ".join(parts) if parts else status


class RoundBar:
    """Draws :func:`progress_line` on ``stream`` (see the module docstring)."""

    def __init__(self, stream: IO[str], *, tty: bool | None = None, width: int = 24) -> None:
        self.stream = stream
        if tty is None:
            isatty = getattr(stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        self.width = width
        self._last_key: tuple[Any, ...] | None = None
        self._drawn = False

    def update(
        self,
        *,
        round: int | None,
        total: int | None,
        metrics: Mapping[str, float] | None = None,
        label: str = "",
        status: str = "",
    ) -> None:
        line = progress_line(
            round=round, total=total, metrics=metrics, label=label, status=status, width=self.width
        )
        if not line:
            return
        if self.tty:
            self.stream.write(_ERASE_LINE + line)
            self._drawn = True
        else:
            key = (round, status)
            if key == self._last_key:
                return
            self._last_key = key
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the updating line (a terminal's cursor goes to the next line)."""
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
        self._drawn = False
