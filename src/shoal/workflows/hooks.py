"""Server hooks named in job.yml as ``"module:attr"`` and found inside ``app/``.

Parsing and the "does the module file exist" check never run user code, so
the server daemon can validate a job at submit time; only :func:`load_attr`
imports, and it runs in the job's own workflow process.

    ref = parse_hook("model:build_model")          # HookRef(module="model", attr="build_model")
    build = load_attr(app_dir, "model:build_model")
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.errors import JobValidationError

__all__ = ["HookRef", "check_hook_file", "load_attr", "parse_hook"]

logger = logging.getLogger(__name__)

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_HOOK_RE = re.compile(rf"^({_IDENT}(?:\.{_IDENT})*):({_IDENT}(?:\.{_IDENT})*)$")


@dataclass(frozen=True)
class HookRef:
    """A parsed ``"module:attr"`` reference."""

    #: Dotted module path relative to ``app/`` (``"model"`` -> ``app/model.py``).
    module: str
    #: Dotted attribute path inside the module.
    attr: str

    def __str__(self) -> str:
        return f"{self.module}:{self.attr}"


def parse_hook(spec: str) -> HookRef:
    """Parse ``"module:attr"``; JobValidationError when it is not of that form."""
    if not isinstance(spec, str):
        raise JobValidationError(f"hook must be a string 'module:attr', got {spec!r}")
    m = _HOOK_RE.match(spec)
    if m is None:
        raise JobValidationError(f"hook {spec!r} is not of the form 'module:attr'")
    return HookRef(module=m.group(1), attr=m.group(2))


def _module_file(app_dir: Path, module: str) -> Path | None:
    base = app_dir.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def check_hook_file(app_dir: Path, spec: str) -> HookRef:
    """Parse ``spec`` and check its module is a file inside ``app_dir`` (no import)."""
    ref = parse_hook(spec)
    if _module_file(app_dir, ref.module) is None:
        raise JobValidationError(
            f"hook {spec!r}: module {ref.module!r} not found in app/ "
            f"(expected app/{ref.module.replace('.', '/')}.py)"
        )
    return ref


def load_attr(app_dir: Path, spec: str) -> Any:
    """Import ``module`` from ``app_dir`` and return ``attr``.

    ``app_dir`` goes first on ``sys.path``. A module of the same name cached
    from another folder (another job run in this process) is dropped first so
    the job always gets its own code.
    """
    ref = parse_hook(spec)
    app_dir = Path(app_dir).resolve()
    expected = _module_file(app_dir, ref.module)
    if expected is None:
        raise JobValidationError(f"hook {spec!r}: module {ref.module!r} not found in {app_dir}")
    if str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))
    top = ref.module.split(".")[0]
    cached = sys.modules.get(top)
    cached_file = getattr(cached, "__file__", None)
    if cached is not None and (
        cached_file is None or not Path(cached_file).resolve().is_relative_to(app_dir)
    ):
        for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
            del sys.modules[name]
    importlib.invalidate_caches()
    try:
        obj: Any = importlib.import_module(ref.module)
    except Exception as exc:
        raise JobValidationError(
            f"hook {spec!r}: importing {ref.module!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    for part in ref.attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise JobValidationError(
                f"hook {spec!r}: {ref.module!r} has no attribute {ref.attr!r}"
            ) from None
    logger.debug("loaded hook %s from %s", spec, expected)
    return obj
