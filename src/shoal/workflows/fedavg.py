"""Federated averaging: scatter the global model, gather, weighted-average."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shoal.errors import JobValidationError
from shoal.workflows.api import WorkflowContext

__all__ = ["FedAvgParams", "check_spec", "run"]


def _number(params: Mapping[str, Any], key: str, default: float | None) -> float | None:
    value = params.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise JobValidationError(f"job.yml: workflow.{key}: must be a number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class FedAvgParams:
    """FedAvg's ``workflow:`` parameters."""

    #: Rounds to run (>= 1).
    num_rounds: int
    #: Seconds a round waits for results before going on with what it has.
    round_timeout_s: float = 600.0
    #: Fraction of the job's sites asked each round (0 < f <= 1); at least
    #: ``min_clients`` sites are always asked.
    sample_fraction: float = 1.0
    #: Seed of the per-round site sampling (same seed, same choice of sites).
    seed: int = 0

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> FedAvgParams:
        """Validate raw params from job.yml; JobValidationError names the field."""
        if not isinstance(params, Mapping):
            raise JobValidationError("job.yml: workflow: must be a mapping")
        known = {"name", "num_rounds", "round_timeout_s", "sample_fraction", "seed"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise JobValidationError(
                f"job.yml: workflow.{unknown[0]}: unknown fedavg parameter "
                f"(known: {', '.join(sorted(known - {'name'}))})"
            )
        rounds = params.get("num_rounds")
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise JobValidationError(
                f"job.yml: workflow.num_rounds: required integer >= 1, got {rounds!r}"
            )
        timeout = _number(params, "round_timeout_s", 600.0)
        assert timeout is not None
        if not math.isfinite(timeout) or timeout <= 0:
            raise JobValidationError(
                f"job.yml: workflow.round_timeout_s: must be > 0, got {timeout!r}"
            )
        fraction = _number(params, "sample_fraction", 1.0)
        assert fraction is not None
        if not 0 < fraction <= 1:
            raise JobValidationError(
                f"job.yml: workflow.sample_fraction: must be in (0, 1], got {fraction!r}"
            )
        seed = params.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise JobValidationError(
                f"job.yml: workflow.seed: must be an integer >= 0, got {seed!r}"
            )
        return cls(num_rounds=rounds, round_timeout_s=timeout, sample_fraction=fraction, seed=seed)


def check_spec(spec: Any) -> None:
    """FedAvg needs the initial global model: ``server.model`` or ``server.initial_weights``."""
    server = spec.server
    if not server.model and not server.initial_weights:
        raise JobValidationError(
            "job.yml: server: fedavg needs server.model or server.initial_weights "
            "to build the initial global model"
        )


def run(ctx: WorkflowContext) -> None:
    raise NotImplementedError
