"""Fixtures and a plugin shared across test folders.

``fed_factory``: real federations of processes started from real startup kits
(``tests/faults/harness.py``), each closed when the test ends, pass or fail.
Used by the fault and the hostile-input tests.

Required tests: when ``SHOAL_REQUIRED_TESTS`` names a file of node-id patterns
(``.ci/run`` sets it to ``.ci/required-tests.txt``), a matching test that
skips fails instead, with the skip's reason; so does a matching module skipped
whole, and a pattern that matches no collected test. A missing prerequisite
(kubectl, nft, root, the MNIST file) then fails CI instead of hiding a test.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from faults.harness import Fed

REQUIRED_TESTS_ENV = "SHOAL_REQUIRED_TESTS"


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


def _glob(pattern: str) -> re.Pattern[str]:
    # Only `*` is special: node ids hold `[` and `]` (parametrize) literally.
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


class RequiredTests:
    """Turns skips of the tests a file names into failures (see the module docstring)."""

    def __init__(self, source: Path) -> None:
        lines = source.read_text(encoding="utf-8").splitlines()
        self.source = source
        self.patterns = [s for line in lines if (s := line.split("#", 1)[0].strip())]
        self._items = {p: _glob(p) for p in self.patterns}
        # A module skipped whole is matched by the part of a pattern before "::".
        self._files = {p: _glob(p.split("::", 1)[0]) for p in self.patterns}
        self.matched: set[str] = set()
        self.problems: list[str] = []

    def _matching(self, nodeid: str, table: dict[str, re.Pattern[str]]) -> list[str]:
        found = [p for p, rx in table.items() if rx.fullmatch(nodeid)]
        self.matched.update(found)
        return found

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: Any) -> Generator[None, Any, None]:
        outcome = yield
        report: pytest.TestReport = outcome.get_result()
        skipped = report.skipped and not hasattr(report, "wasxfail")
        if skipped and self._matching(item.nodeid, self._items):
            report.outcome = "failed"
            report.longrepr = f"required by {self.source} but skipped: {_skip_reason(report)}"

    @pytest.hookimpl(hookwrapper=True)
    def pytest_make_collect_report(self, collector: pytest.Collector) -> Generator[None, Any, None]:
        outcome = yield
        report: pytest.CollectReport = outcome.get_result()
        # Failing the collect report would stop the whole run; say it at the end.
        if report.skipped and self._matching(report.nodeid, self._files):
            self.problems.append(f"{report.nodeid}: skipped whole: {_skip_reason(report)}")

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            self._matching(item.nodeid, self._items)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.problems += [
            f"{p}: matches no collected test" for p in self.patterns if p not in self.matched
        ]
        if self.problems and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.problems:
            terminalreporter.section(f"required tests ({self.source})", red=True)
            for line in self.problems:
                terminalreporter.line(line)


def pytest_configure(config: pytest.Config) -> None:
    source = os.environ.get(REQUIRED_TESTS_ENV)
    if source:
        config.pluginmanager.register(RequiredTests(Path(source)), "shoal-required-tests")
