"""Typed workflow parameters: a frozen dataclass, parsed from job.yml's ``workflow:``.

Every workflow declares its parameters once, as a frozen dataclass whose
fields carry their bounds and doc in metadata (:func:`param`); one parser
checks them all and names the field in each refusal, so no workflow writes
its own parsing::

    @dataclass(frozen=True)
    class MyParams:
        num_rounds: int = param(doc="rounds to run", lo=1, hi=1000, required=True)
        server_lr: float = param(1.0, doc="server learning rate", lo=0.0, lo_open=True)

    params = load_params(MyParams, {"num_rounds": 3}, workflow="mine")

Refusals read ``job.yml: workflow.<field>: <problem>``. A field's type (its
annotation: ``int``, ``float``, ``str`` or ``bool``) decides the check: an
``int`` must be an integer (not a bool), a ``float`` any number (converted),
a ``str`` one of ``choices`` when given.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from shoal.errors import JobValidationError

__all__ = ["Bound", "ParamDoc", "load_params", "param", "param_docs", "parser"]

T = TypeVar("T")

_KEY = "shoal.param"


@dataclass(frozen=True)
class Bound:
    """What a parameter accepts, and how a refusal words it."""

    #: Shown in docs and ``param_docs``.
    doc: str
    #: Lowest and highest accepted value (None: unbounded on that side).
    lo: float | None = None
    hi: float | None = None
    #: The bound itself is refused (``lo < x`` rather than ``lo <= x``).
    lo_open: bool = False
    hi_open: bool = False
    #: The accepted values of a ``str`` parameter (empty: any string).
    choices: tuple[str, ...] = ()
    #: How the range reads in a refusal; derived from the bounds when empty
    #: (``1..1000000`` for an int, ``in (0, 1]`` for a float).
    text: str = ""
    #: Appended to the range in a refusal (e.g. what 0 means).
    note: str = ""
    #: No default: job.yml must give it.
    required: bool = False


def param(
    default: Any = dataclasses.MISSING,
    *,
    doc: str,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    choices: Sequence[str] = (),
    text: str = "",
    note: str = "",
) -> Any:
    """A dataclass field with its bounds and doc; no default makes it required."""
    bound = Bound(
        doc=doc,
        lo=lo,
        hi=hi,
        lo_open=lo_open,
        hi_open=hi_open,
        choices=tuple(choices),
        text=text,
        note=note,
        required=default is dataclasses.MISSING,
    )
    return dataclasses.field(default=default, metadata={_KEY: bound})


@dataclass(frozen=True)
class ParamDoc:
    """One parameter, for a docs table."""

    name: str
    type: str
    default: Any
    required: bool
    doc: str


def _fields(cls: type) -> list[tuple[dataclasses.Field[Any], type, Bound]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        bound = f.metadata.get(_KEY)
        if bound is None:
            raise TypeError(f"{cls.__name__}.{f.name}: declare it with shoal.workflows.param()")
        out.append((f, hints[f.name], bound))
    return out


def param_docs(cls: type) -> list[ParamDoc]:
    """The parameters of ``cls`` in declaration order."""
    return [
        ParamDoc(
            name=f.name,
            type=kind.__name__,
            default=None if bound.required else f.default,
            required=bound.required,
            doc=bound.doc,
        )
        for f, kind, bound in _fields(cls)
    ]


def load_params(cls: type[T], raw: Mapping[str, Any], *, workflow: str) -> T:
    """``raw`` (job.yml's ``workflow:`` mapping, ``name`` allowed) checked
    into ``cls``; JobValidationError naming the first bad field."""
    if not isinstance(raw, Mapping):
        raise JobValidationError("job.yml: workflow: must be a mapping")
    fields = _fields(cls)
    known = {f.name for f, _, _ in fields}
    unknown = sorted(set(raw) - known - {"name"})
    if unknown:
        raise JobValidationError(
            f"job.yml: workflow.{unknown[0]}: unknown {workflow} parameter "
            f"(known: {', '.join(sorted(known))})"
        )
    values = {}
    for f, kind, bound in fields:
        value = raw.get(f.name, None if bound.required else f.default)
        values[f.name] = _check(f.name, kind, bound, value)
    return cls(**values)


def parser(cls: type[T], *, workflow: str) -> Callable[[Mapping[str, Any]], T]:
    """``load_params`` bound to ``cls``: a registry entry's ``parse_params``."""

    def parse(raw: Mapping[str, Any]) -> T:
        return load_params(cls, raw, workflow=workflow)

    return parse


def _refuse(name: str, problem: str) -> JobValidationError:
    return JobValidationError(f"job.yml: workflow.{name}: {problem}")


def _check(name: str, kind: type, bound: Bound, value: Any) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise _refuse(name, f"must be true or false, got {value!r}")
        return value
    if kind is int:
        return _check_int(name, bound, value)
    if kind is float:
        return _check_float(name, bound, value)
    if kind is str:
        return _check_str(name, bound, value)
    raise TypeError(f"parameter {name}: unsupported type {kind!r}")


def _within(bound: Bound, x: float) -> bool:
    if bound.lo is not None and not (x > bound.lo if bound.lo_open else x >= bound.lo):
        return False
    return bound.hi is None or (x < bound.hi if bound.hi_open else x <= bound.hi)


def _interval(bound: Bound) -> str:
    lo = "-inf" if bound.lo is None else f"{bound.lo:g}"
    hi = "inf" if bound.hi is None else f"{bound.hi:g}"
    return f"in {'(' if bound.lo_open else '['}{lo}, {hi}{')' if bound.hi_open else ']'}"


def _check_int(name: str, bound: Bound, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not _within(bound, value):
        if bound.text:
            span = bound.text
        elif bound.lo is not None and bound.hi is not None:
            span = f"{int(bound.lo)}..{int(bound.hi)}"
        else:
            span = _interval(bound)[3:]
        what = "required integer" if bound.required else "must be an integer"
        raise _refuse(name, f"{what} in {span}{bound.note}, got {value!r}")
    return value


def _check_float(name: str, bound: Bound, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        what = "required number" if bound.required else "must be a number"
        raise _refuse(name, f"{what}, got {value!r}")
    try:
        x = float(value)
    except OverflowError:
        raise _refuse(name, "number out of range") from None
    if not math.isfinite(x) or not _within(bound, x):
        raise _refuse(name, f"must be {bound.text or _interval(bound)}{bound.note}, got {x!r}")
    return x


def _check_str(name: str, bound: Bound, value: Any) -> str:
    if not isinstance(value, str) or (bound.choices and value not in bound.choices):
        options = f"one of {', '.join(bound.choices)}" if bound.choices else "a string"
        raise _refuse(name, f"must be {options}{bound.note}, got {value!r}")
    return value
