"""Server-side workflows (FedAvg and friends): pure logic, no networking."""

from __future__ import annotations

from shoal.workflows.api import Communicator, TaskResult, WorkflowContext, WorkflowFn

__all__ = ["Communicator", "TaskResult", "WorkflowContext", "WorkflowFn"]
