"""docs/security.md backs its claims with tests: every test it names exists.

A renamed or deleted test would otherwise leave the threat model citing
evidence that is no longer there.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "security.md"

#: `tests/x/test_y.py` or `tests/x/test_y.py::test_name`, in backticks.
_REF = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`")


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
    }


def test_every_test_the_security_doc_names_exists() -> None:
    refs = _REF.findall(DOC.read_text(encoding="utf-8"))
    assert refs, "docs/security.md names no tests"
    missing = []
    for file, name in refs:
        path = ROOT / file
        if not path.is_file():
            missing.append(file)
        elif name and name not in _test_names(path):
            missing.append(f"{file}::{name}")
    assert not missing, f"docs/security.md names tests that do not exist: {sorted(set(missing))}"


def test_the_threat_model_covers_each_attacker() -> None:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Threat model") :]
    for attacker in ("network attacker", "malicious admin", "malicious site", "curious server"):
        assert f"### A {attacker}" in section, attacker
