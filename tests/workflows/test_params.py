"""The one typed-params helper: FedAvg's parameters refused with the very
messages, and accepted with the very values, of the hand-written parser it
replaced (kept below, verbatim, as the reference); the helper's own rules."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import pytest

from shoal.errors import JobValidationError
from shoal.workflows import RoundParams, load_params, param, parse_params
from shoal.workflows.params import param_docs

_MAX_ROUNDS = 1_000_000
_MAX_ROUND_TIMEOUT_S = 30 * 24 * 3600.0
_MAX_SEED = 2**63 - 1
DEFAULT_MAX_NUM_EXAMPLES = 10**9
MAX_NUM_EXAMPLES_LIMIT = 2**53


def _number(params: Mapping[str, Any], key: str, default: float | None) -> float | None:
    value = params.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise JobValidationError(f"job.yml: workflow.{key}: must be a number, got {value!r}")
    try:
        return float(value)
    except OverflowError:
        raise JobValidationError(f"job.yml: workflow.{key}: number out of range") from None


def _legacy_parse(params: Mapping[str, Any]) -> dict[str, Any]:
    """FedAvgParams.parse as it was before the generic helper, verbatim."""
    if not isinstance(params, Mapping):
        raise JobValidationError("job.yml: workflow: must be a mapping")
    known = {
        "name",
        "num_rounds",
        "round_timeout_s",
        "sample_fraction",
        "seed",
        "keep_models",
        "max_num_examples",
    }
    unknown = sorted(set(params) - known)
    if unknown:
        raise JobValidationError(
            f"job.yml: workflow.{unknown[0]}: unknown fedavg parameter "
            f"(known: {', '.join(sorted(known - {'name'}))})"
        )
    rounds = params.get("num_rounds")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= _MAX_ROUNDS:
        raise JobValidationError(
            f"job.yml: workflow.num_rounds: required integer in 1..{_MAX_ROUNDS}, got {rounds!r}"
        )
    timeout = _number(params, "round_timeout_s", 600.0)
    assert timeout is not None
    if not math.isfinite(timeout) or not 0 < timeout <= _MAX_ROUND_TIMEOUT_S:
        raise JobValidationError(
            f"job.yml: workflow.round_timeout_s: must be > 0 and <= "
            f"{_MAX_ROUND_TIMEOUT_S:.0f}, got {timeout!r}"
        )
    fraction = _number(params, "sample_fraction", 1.0)
    assert fraction is not None
    if not 0 < fraction <= 1:
        raise JobValidationError(
            f"job.yml: workflow.sample_fraction: must be in (0, 1], got {fraction!r}"
        )
    seed = params.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MAX_SEED:
        raise JobValidationError(
            f"job.yml: workflow.seed: must be an integer in 0..{_MAX_SEED}, got {seed!r}"
        )
    keep = params.get("keep_models", 3)
    if isinstance(keep, bool) or not isinstance(keep, int) or not 0 <= keep <= _MAX_ROUNDS:
        raise JobValidationError(
            f"job.yml: workflow.keep_models: must be an integer in 0..{_MAX_ROUNDS} (0: keep "
            f"every round's model), got {keep!r}"
        )
    max_examples = params.get("max_num_examples", DEFAULT_MAX_NUM_EXAMPLES)
    if (
        isinstance(max_examples, bool)
        or not isinstance(max_examples, int)
        or not 1 <= max_examples <= MAX_NUM_EXAMPLES_LIMIT
    ):
        raise JobValidationError(
            f"job.yml: workflow.max_num_examples: must be an integer in "
            f"[1, 2**53], got {max_examples!r}"
        )
    return dict(
        num_rounds=rounds,
        round_timeout_s=timeout,
        sample_fraction=fraction,
        seed=seed,
        keep_models=keep,
        max_num_examples=max_examples,
    )


_GOOD = {"num_rounds": 3}
_CASES: list[Any] = [
    [],
    "3",
    {},
    {"num_rounds": 1},
    {"name": "fedavg", "num_rounds": 1},
    {"num_rounds": 1, "rounds": 2, "alpha": 1},
    {"num_rounds": 0},
    {"num_rounds": 1_000_000},
    {"num_rounds": 1_000_001},
    {"num_rounds": True},
    {"num_rounds": 2.0},
    {"num_rounds": "3"},
    {"num_rounds": None},
    {"num_rounds": -(2**70)},
    *[
        {**_GOOD, "round_timeout_s": v}
        for v in (0, -1, 0.5, 1, 2592000, 2592000.5, 2592001, True, "soon", 10**400, math.inf)
    ],
    *[{**_GOOD, "sample_fraction": v} for v in (0, 0.0, 1e-9, 0.5, 1, 1.5, math.nan, "all")],
    *[{**_GOOD, "seed": v} for v in (-1, 0, 2**63 - 1, 2**63, 1.0, None, False)],
    *[{**_GOOD, "keep_models": v} for v in (-1, 0, 1_000_000, 1_000_001, 1.5, True, "all")],
    *[
        {**_GOOD, "max_num_examples": v}
        for v in (0, 1, 2**53, 2**53 + 1, -1, 1.5, True, "many", None)
    ],
    {"num_rounds": 0, "seed": -1},
    {"num_rounds": 2, "seed": -1, "keep_models": -1},
]


def _outcome(fn: Any, raw: Any) -> Any:
    try:
        return fn(raw)
    except JobValidationError as exc:
        return ("refused", str(exc))


def _as_legacy(outcome: Any) -> Any:
    """A parse outcome without what parameters added since do (``evaluate_after``,
    false unless given, and its name in the list of known parameters)."""
    if isinstance(outcome, dict):
        assert outcome.pop("evaluate_after") is False
        return outcome
    return (outcome[0], outcome[1].replace("evaluate_after, ", ""))


@pytest.mark.parametrize("raw", _CASES, ids=repr)
def test_fedavg_params_as_the_hand_written_parser_had_them(raw: Any) -> None:
    # FedAvg's parameters were the round driver's (it has the aggregator's too now).
    want = _outcome(_legacy_parse, raw)
    got = _as_legacy(
        _outcome(lambda r: asdict(load_params(RoundParams, r, workflow="fedavg")), raw)
    )
    assert got == want
    if isinstance(want, dict):
        assert all(type(got[k]) is type(v) for k, v in want.items())


def test_a_null_timeout_is_refused_by_name_not_an_assertion() -> None:
    # The hand-written parser tripped an assert on `round_timeout_s: ~`.
    with pytest.raises(AssertionError):
        _legacy_parse({"num_rounds": 1, "round_timeout_s": None})
    with pytest.raises(
        JobValidationError, match=r"^job.yml: workflow.round_timeout_s: must be a number, got None$"
    ):
        parse_params("fedavg", {"num_rounds": 1, "round_timeout_s": None})


@dataclass(frozen=True)
class _Mixed:
    lr: float = param(doc="learning rate", lo=0, lo_open=True)
    mode: str = param("fast", doc="how", choices=("fast", "exact"))
    label: str = param("x", doc="any string")
    verbose: bool = param(False, doc="say more")
    steps: int = param(10, doc="steps", lo=1)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "workflow.lr: required number, got None"),
        ({"lr": 0}, r"workflow.lr: must be in \(0, inf\], got 0.0"),
        ({"lr": 1, "mode": "slow"}, "workflow.mode: must be one of fast, exact, got 'slow'"),
        ({"lr": 1, "label": 3}, "workflow.label: must be a string, got 3"),
        ({"lr": 1, "verbose": 1}, "workflow.verbose: must be true or false, got 1"),
        ({"lr": 1, "steps": 0}, r"workflow.steps: must be an integer in \[1, inf\], got 0"),
        ({"lr": 1, "x": 0}, r"workflow.x: unknown mine parameter \(known: label, lr, mode"),
    ],
)
def test_the_helper_names_the_field(raw: Mapping[str, Any], message: str) -> None:
    with pytest.raises(JobValidationError, match=f"^job.yml: {message}"):
        load_params(_Mixed, raw, workflow="mine")


def test_the_helper_gives_typed_values_and_docs() -> None:
    p = load_params(_Mixed, {"lr": 1, "mode": "exact", "verbose": True}, workflow="mine")
    assert p == _Mixed(lr=1.0, mode="exact", label="x", verbose=True, steps=10)
    assert isinstance(p.lr, float)
    docs = {d.name: d for d in param_docs(_Mixed)}
    assert docs["lr"].required and docs["lr"].default is None and docs["lr"].type == "float"
    assert docs["steps"].default == 10 and docs["steps"].doc == "steps"


def test_a_field_without_param_is_a_programming_error() -> None:
    @dataclass(frozen=True)
    class Bare:
        n: int = 1

    with pytest.raises(TypeError, match=r"Bare.n: declare it with shoal.workflows.param\(\)"):
        load_params(Bare, {}, workflow="bare")


def test_docs_list_every_fedavg_parameter() -> None:
    from pathlib import Path

    from shoal.workflows import FedAvgParams

    text = (Path(__file__).resolve().parents[2] / "docs" / "jobs.md").read_text()
    table = text.split("### fedavg", 1)[1].split("\n\n", 3)[2]
    assert [d.name for d in param_docs(FedAvgParams)] == [
        line.split("`")[1] for line in table.splitlines()[2:]
    ]
