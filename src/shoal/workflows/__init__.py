"""Server-side workflows (FedAvg and friends): pure logic, no networking."""

from __future__ import annotations

from shoal.workflows.api import Communicator, TaskResult, WorkflowContext, WorkflowFn
from shoal.workflows.fedavg import FedAvgParams
from shoal.workflows.registry import (
    WorkflowEntry,
    check_spec,
    get_workflow,
    parse_params,
    register,
    workflow_names,
)
from shoal.workflows.store import Checkpoint, RoundStore

__all__ = [
    "Checkpoint",
    "Communicator",
    "FedAvgParams",
    "RoundStore",
    "TaskResult",
    "WorkflowContext",
    "WorkflowEntry",
    "WorkflowFn",
    "check_spec",
    "get_workflow",
    "parse_params",
    "register",
    "workflow_names",
]
