"""The admin side: a Python session API, its typed answers and the interactive console."""

from __future__ import annotations

from shoal.admin.results import (
    CrossSiteEval,
    FederationStatus,
    JobErrors,
    JobMeta,
    JobStats,
    JobSummary,
    ServerStatus,
    SiteProgress,
    SiteStatus,
    SysInfo,
)
from shoal.admin.session import AdminSession

__all__ = [
    "AdminSession",
    "CrossSiteEval",
    "FederationStatus",
    "JobErrors",
    "JobMeta",
    "JobStats",
    "JobSummary",
    "ServerStatus",
    "SiteProgress",
    "SiteStatus",
    "SysInfo",
]
