"""What each page shows, read from the server through the admin API.

Each function asks an :class:`~shoal.admin.commands.AdminSessionLike` (the
admin's own session: their certificate, their role) and returns a JSON object
the page renders. An answer the admin's role does not allow is part of the
snapshot (``"not allowed: ..."``), not an error: a member still sees the
federation without its sites' hardware.

    fed = federation(session, sys_cache)     # server, sites (+ sys_info), who I am
    jobs(session)                            # {"jobs": [...list_jobs...]}
    job(session, "3f2a")                     # meta, stats, log tails of one job
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from shoal import jobstatus
from shoal.admin.commands import COMMANDS, AdminSessionLike
from shoal.errors import NotAuthorizedError, NotFoundError, ShoalError

__all__ = ["SysInfoCache", "allowed_commands", "federation", "job", "jobs"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Log lines shown per source on a job's page.
LOG_TAIL_LINES = 40

#: The actions a page offers, by command name.
ACTIONS = ("submit_job", "abort_job", "clone_job", "delete_job", "download_job")


def allowed_commands(role: str) -> list[str]:
    """The page's actions that ``role`` may run at all (the server still
    decides per job: an org_admin may abort only their org's jobs)."""
    return [name for name in ACTIONS if role in COMMANDS[name].roles]


def _attempt(call: Callable[[], _T]) -> tuple[_T | None, str | None]:
    """``call()``'s answer, or the reason there is none (for the page)."""
    try:
        return call(), None
    except NotAuthorizedError as exc:
        return None, f"not allowed for your role: {exc}"
    except NotFoundError as exc:
        return None, f"not found: {exc}"


class SysInfoCache:
    """``sys_info`` of each connected site, asked again only when the site
    reconnects (its platform does not change while it stays connected)."""

    def __init__(self) -> None:
        self._by_site: dict[str, tuple[str | None, dict[str, Any]]] = {}

    def get(self, session: AdminSessionLike, site: str, since: str | None) -> dict[str, Any]:
        cached = self._by_site.get(site)
        if cached is not None and cached[0] == since:
            return cached[1]
        info, why = _attempt(lambda: session.sys_info(site).to_dict())
        entry = info if info is not None else {"unavailable": why}
        self._by_site[site] = (since, entry)
        return entry


def federation(session: AdminSessionLike, cache: SysInfoCache) -> dict[str, Any]:
    """The federation page: the server, every site, and who is looking."""
    status = session.check_status()
    sites = []
    for site in status.sites:
        row = site.to_dict()
        if site.connected:
            row["sys_info"] = cache.get(session, site.name, site.connected_since)
        sites.append(row)
    return {
        "server": status.server.to_dict(),
        "sites": sites,
        "user": session.user,
        "role": session.role,
        "server_address": session.server_address,
    }


def jobs(session: AdminSessionLike) -> dict[str, Any]:
    """The jobs page: every job this admin may see, newest first."""
    listed = [j.to_dict() for j in session.list_jobs()]
    listed.reverse()
    return {"jobs": listed}


def job(session: AdminSessionLike, job_id: str) -> dict[str, Any]:
    """One job's page: its summary, progress, metrics per round, matrix and logs."""
    meta = session.get_job_meta(job_id)
    stats, stats_error = _attempt(lambda: session.show_stats(meta.job_id).to_dict())
    logs: dict[str, str] = {}
    log_errors: dict[str, str] = {}
    for target in ("server", *meta.sites):
        text, why = _attempt(lambda t=target: session.get_log(meta.job_id, t, LOG_TAIL_LINES))  # type: ignore[misc]
        if text is not None:
            logs[target] = text
        elif why is not None:
            log_errors[target] = why
    summary = meta.to_dict()
    summary.pop("spec", None)
    return {
        "meta": summary,
        "workflow": _workflow_name(meta.spec),
        "finished": jobstatus.is_finished(meta.status),
        "stats": stats or {},
        "stats_error": stats_error,
        "logs": logs,
        "log_errors": log_errors,
    }


def _workflow_name(spec: Any) -> str | None:
    workflow = spec.get("workflow") if isinstance(spec, dict) else None
    if isinstance(workflow, dict) and isinstance(workflow.get("name"), str):
        return str(workflow["name"])
    return None


def describe(exc: BaseException) -> str:
    """One line for an error while reading a snapshot (the page's banner)."""
    if isinstance(exc, ShoalError):
        return f"{type(exc).__name__}: {exc}"
    log.exception("dashboard: unexpected error while reading from the server")
    return f"unexpected {type(exc).__name__}: {exc}"
