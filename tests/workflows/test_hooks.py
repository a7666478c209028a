"""Server hooks: parse, locate without importing, import from app/."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.errors import JobValidationError
from shoal.workflows.hooks import HookRef, check_hook_file, load_attr, parse_hook


def test_parse() -> None:
    assert parse_hook("model:build_model") == HookRef("model", "build_model")
    assert str(parse_hook("pkg.mod:Cls.method")) == "pkg.mod:Cls.method"
    for bad in ["model", "model:", ":x", "a b:c", "../x:y", "m:1x"]:
        with pytest.raises(JobValidationError, match="module:attr"):
            parse_hook(bad)


def test_check_and_load(tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "pkg").mkdir(parents=True)
    (app / "pkg" / "__init__.py").write_text("")
    (app / "pkg" / "hookmod_a.py").write_text("VALUE = 41\ndef f():\n    return VALUE + 1\n")
    (app / "broken_hookmod.py").write_text("raise ImportError('nope')\n")
    assert check_hook_file(app, "pkg.hookmod_a:f").module == "pkg.hookmod_a"
    with pytest.raises(JobValidationError, match="not found in app/"):
        check_hook_file(app, "absent:f")
    assert load_attr(app, "pkg.hookmod_a:f")() == 42
    with pytest.raises(JobValidationError, match="has no attribute 'g'"):
        load_attr(app, "pkg.hookmod_a:g")
    with pytest.raises(
        JobValidationError, match="importing 'broken_hookmod' failed: ImportError: nope"
    ):
        load_attr(app, "broken_hookmod:x")


def test_each_app_gets_its_own_module(tmp_path: Path) -> None:
    for i in (1, 2):
        app = tmp_path / f"app{i}"
        app.mkdir()
        (app / "shoal_test_samename.py").write_text(f"def which():\n    return {i}\n")
    assert load_attr(tmp_path / "app1", "shoal_test_samename:which")() == 1
    assert load_attr(tmp_path / "app2", "shoal_test_samename:which")() == 2
