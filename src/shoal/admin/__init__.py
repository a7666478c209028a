"""The admin side: a Python session API and the interactive console."""

from __future__ import annotations

from shoal.admin.session import AdminSession

__all__ = ["AdminSession"]
