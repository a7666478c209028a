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
from shoal.workflows import cross_site, cyclic, evaluate, fedavg, fedbuff, fedopt, fedprox, scaffold
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


register(
    WorkflowEntry(
        name="fedavg",
        run=fedavg.run,
        parse_params=fedavg.parse_params,
        check_spec=fedavg.check_spec,
    )
)
register(
    WorkflowEntry(
        name="evaluate",
        run=evaluate.run,
        parse_params=evaluate.parse_params,
        check_spec=evaluate.check_spec,
    )
)
register(
    WorkflowEntry(
        name="cross_site_eval",
        run=cross_site.run,
        parse_params=cross_site.parse_params,
        check_spec=cross_site.check_spec,
    )
)
register(
    WorkflowEntry(
        name="cyclic",
        run=cyclic.run,
        parse_params=cyclic.parse_params,
        check_spec=cyclic.check_spec,
    )
)
register(
    WorkflowEntry(
        name="fedbuff",
        run=fedbuff.run,
        parse_params=fedbuff.parse_params,
        check_spec=fedbuff.check_spec,
    )
)
register(
    WorkflowEntry(
        name="scaffold",
        run=scaffold.run,
        parse_params=scaffold.parse_params,
        check_spec=scaffold.check_spec,
    )
)
register(
    WorkflowEntry(
        name="fedavgm",
        run=fedopt.run_fedavgm,
        parse_params=fedopt.parse_fedavgm,
        check_spec=needs_model_and_aggregator("fedavgm"),
    )
)
register(
    WorkflowEntry(
        name="fedadam",
        run=fedopt.run_fedadam,
        parse_params=fedopt.parse_fedadam,
        check_spec=needs_model_and_aggregator("fedadam"),
    )
)
register(
    WorkflowEntry(
        name="fedyogi",
        run=fedopt.run_fedyogi,
        parse_params=fedopt.parse_fedyogi,
        check_spec=needs_model_and_aggregator("fedyogi"),
    )
)
register(
    WorkflowEntry(
        name="fedadagrad",
        run=fedopt.run_fedadagrad,
        parse_params=fedopt.parse_fedadagrad,
        check_spec=needs_model_and_aggregator("fedadagrad"),
    )
)
register(
    WorkflowEntry(
        name="fedprox",
        run=fedprox.run,
        parse_params=fedprox.parse_params,
        check_spec=fedprox.check_spec,
    )
)
