"""Server-side workflows (FedAvg and friends): pure logic, no networking.

A workflow is the round driver (``run_rounds``) with its policies
(``Policies``: an aggregator factory and a server update), typed parameters
(``param``, ``load_params``) and a registry entry (``register``).
"""

from __future__ import annotations

from shoal.workflows.api import Communicator, TaskResult, WorkflowContext, WorkflowFn
from shoal.workflows.driver import RoundParams, needs_initial_model, run_rounds, select_sites
from shoal.workflows.fedavg import FedAvgParams
from shoal.workflows.params import load_params, param, parser
from shoal.workflows.policies import (
    Policies,
    ServerState,
    ServerUpdate,
    UpdateResult,
    keep_aggregate,
)
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
    "Policies",
    "RoundParams",
    "RoundStore",
    "ServerState",
    "ServerUpdate",
    "TaskResult",
    "UpdateResult",
    "WorkflowContext",
    "WorkflowEntry",
    "WorkflowFn",
    "check_spec",
    "get_workflow",
    "keep_aggregate",
    "load_params",
    "needs_initial_model",
    "param",
    "parse_params",
    "parser",
    "register",
    "run_rounds",
    "select_sites",
    "workflow_names",
]
