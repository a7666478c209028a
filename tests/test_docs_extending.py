"""docs/extending.md's aggregator example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def test_the_aggregator_example_runs() -> None:
    text = DOC.read_text()
    section = text[text.index("## An aggregator") : text.index("## A framework adapter")]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    exec(compile(code, "extending.md", "exec"), {})  # noqa: S102 - our own doc
