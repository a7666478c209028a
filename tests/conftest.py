"""Fixtures shared across test folders.

``fed_factory``: real federations of processes started from real startup kits
(``tests/faults/harness.py``), each closed when the test ends, pass or fail.
Used by the fault and the hostile-input tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from faults.harness import Fed


@pytest.fixture
def fed_factory(tmp_path: Path) -> Iterator:
    made: list[Fed] = []

    def make(**kw: object) -> Fed:
        fed = Fed(tmp_path / f"fed{len(made)}", **kw)  # type: ignore[arg-type]
        made.append(fed)
        return fed

    yield make
    for fed in made:
        fed.close()
