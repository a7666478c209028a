"""The required-tests plugin (tests/conftest.py): CI fails when a test it needs skipped.

Each case runs pytest in a subprocess on a tiny test folder, with the plugin
loaded as CI loads it: through ``SHOAL_REQUIRED_TESTS``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

TINY = """\
import pytest

def test_plain():
    pass

def test_needs_tool():
    pytest.skip("no frobnicator on PATH")

@pytest.mark.skipif(True, reason="root ignores folder permissions")
def test_legitimate_skip():
    pass

@pytest.mark.xfail(reason="known")
def test_expected_failure():
    assert False

@pytest.mark.parametrize("x", ["a", "b"])
def test_p(x):
    pass
"""


def run(folder: Path, required: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SHOAL_REQUIRED_TESTS"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    if required is not None:
        listing = folder.parent / "required.txt"
        listing.write_text(textwrap.dedent(required))
        env["SHOAL_REQUIRED_TESTS"] = str(listing)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-rs"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    tests = tmp_path / "t"
    tests.mkdir()
    (tests / "test_tiny.py").write_text(TINY)
    return tests


def test_without_the_variable_skips_stay_skips(folder: Path) -> None:
    result = run(folder, None)
    assert result.returncode == 0, result.stdout
    assert "no frobnicator on PATH" in result.stdout


def test_a_required_test_that_skips_fails_with_the_reason(folder: Path) -> None:
    result = run(
        folder,
        """\
        # comments and blank lines are ignored

        test_tiny.py::test_needs_tool   # the tool CI installs
        test_tiny.py::test_plain
        test_tiny.py::test_p[a]
        """,
    )
    assert result.returncode == 1, result.stdout
    assert "but skipped: no frobnicator on PATH" in result.stdout
    # Only the listed skip fails; the legitimate one and the xfail stay as they were.
    assert "1 failed, 3 passed, 1 skipped, 1 xfailed" in result.stdout


def test_listed_tests_that_run_pass(folder: Path) -> None:
    result = run(folder, "test_tiny.py::test_p*\ntest_tiny.py::test_plain\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed, 2 skipped, 1 xfailed" in result.stdout


def test_a_required_module_skipped_whole_fails(folder: Path) -> None:
    (folder / "test_gone.py").write_text(
        "import pytest\npytest.skip('needs root', allow_module_level=True)\n"
    )
    result = run(folder, "test_gone.py::*\n")
    assert result.returncode == 1, result.stdout
    assert "test_gone.py: skipped whole: needs root" in result.stdout


def test_a_pattern_that_matches_nothing_fails(folder: Path) -> None:
    result = run(folder, "test_tiny.py::test_plain\ntest_renamed.py::*\n")
    assert result.returncode == 1, result.stdout
    assert "test_renamed.py::*: matches no collected test" in result.stdout


def test_the_ci_list_names_real_tests() -> None:
    """Every pattern in .ci/required-tests.txt matches a test file in this tree."""
    listing = ROOT / ".ci" / "required-tests.txt"
    lines = listing.read_text().splitlines()
    patterns = [s for line in lines if (s := line.split("#", 1)[0].strip())]
    assert patterns
    for pattern in patterns:
        path, _, name = pattern.partition("::")
        assert (ROOT / path).is_file(), pattern
        if name and "*" not in name:
            assert f"def {name.split('[')[0]}(" in (ROOT / path).read_text(), pattern
