"""``shoal dashboard``: a live web view of a federation, for one admin.

The dashboard is a client of the admin API (:mod:`shoal.admin`) with the
admin's own certificate and role; it serves pages on loopback and pushes
changes to them as server-sent events. Needs the ``dashboard`` extra
(Starlette, uvicorn, Jinja2, python-multipart)::

    from shoal.web import DashboardConfig, start_dashboard

    with start_dashboard(DashboardConfig(kit=kit_dir, port=0)) as dash:
        print(dash.url)

The pure parts (:mod:`shoal.web.events`, :mod:`shoal.web.security`) import
without the extra; the names below load it on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shoal.web.serve import DashboardConfig, RunningDashboard, start_dashboard

__all__ = ["DashboardConfig", "RunningDashboard", "start_dashboard"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from shoal.web import serve

        return getattr(serve, name)
    raise AttributeError(f"module 'shoal.web' has no attribute {name!r}")
