"""Workflows by name, as job.yml's ``workflow.name`` refers to them.

    run = get_workflow("fedavg")
    params = parse_params("fedavg", {"num_rounds": 3})    # FedAvgParams(...)

Each entry also knows how to parse its parameters and which job settings it
needs, so a job is refused at submit time rather than when it starts. A new
workflow is the round driver with its own policies (``shoal.workflows.driver``,
``docs/extending.md``) and one entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shoal.errors import JobValidationError
from shoal.workflows import (
    cross_site,
    cyclic,
    dp_fedavg,
    evaluate,
    fedavg,
    fedbuff,
    fedopt,
    fedprox,
    scaffold,
    secagg,
)
from shoal.workflows.api import WorkflowFn
from shoal.workflows.robust import needs_model_and_aggregator

__all__ = [
    "WorkflowEntry",
    "check_spec",
    "get_workflow",
    "parse_params",
    "register",
    "workflow_names",
]


@dataclass(frozen=True)
class WorkflowEntry:
    """A registered workflow."""

    #: The name job.yml uses.
    name: str
    #: Runs the workflow.
    run: WorkflowFn
    #: Raw ``workflow:`` params -> typed params; raises JobValidationError.
    parse_params: Callable[[Mapping[str, Any]], Any]
    #: Extra checks on the whole job spec (e.g. required server hooks); raises
    #: JobValidationError. Must not run user code.
    check_spec: Callable[[Any], None] | None = None


_REGISTRY: dict[str, WorkflowEntry] = {}


def register(entry: WorkflowEntry) -> None:
    """Add (or replace) a workflow."""
    _REGISTRY[entry.name] = entry


def workflow_names() -> list[str]:
    """Registered names, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> WorkflowEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise JobValidationError(
            f"unknown workflow {name!r} (known: {', '.join(workflow_names())})"
        ) from None


def get_workflow(name: str) -> WorkflowFn:
    """The workflow called ``name``; JobValidationError listing the known ones."""
    return _entry(name).run


def parse_params(name: str, params: Mapping[str, Any]) -> Any:
    """Typed parameters of workflow ``name``; JobValidationError when invalid."""
    return _entry(name).parse_params(params)


def check_spec(name: str, spec: Any) -> None:
    """Run workflow ``name``'s checks on a whole job spec."""
    check = _entry(name).check_spec
    if check is not None:
        check(spec)


# A module-level workflow: its module's run, parse_params and check_spec.
for _name, _module in (
    ("fedavg", fedavg),
    ("evaluate", evaluate),
    ("cross_site_eval", cross_site),
    ("cyclic", cyclic),
    ("fedbuff", fedbuff),
    ("scaffold", scaffold),
    ("fedprox", fedprox),
    ("dp_fedavg", dp_fedavg),
    ("secagg", secagg),
):
    register(
        WorkflowEntry(
            name=_name,
            run=_module.run,
            parse_params=_module.parse_params,
            check_spec=_module.check_spec,
        )
    )
# The FedOpt family shares one module: an entry per server optimizer.
for _name in ("fedavgm", "fedadam", "fedyogi", "fedadagrad"):
    register(
        WorkflowEntry(
            name=_name,
            run=getattr(fedopt, f"run_{_name}"),
            parse_params=getattr(fedopt, f"parse_{_name}"),
            check_spec=needs_model_and_aggregator(_name),
        )
    )
