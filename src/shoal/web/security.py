"""Who may use the dashboard, and which requests may change something.

The dashboard acts with the admin's own certificate, so anyone who can drive
it is, to the server, that admin. Three locks keep it theirs:

- **a login token**: ``shoal dashboard`` prints a URL holding a random token
  (as Jupyter does); the first visit trades it for a session cookie
  (``HttpOnly``, ``SameSite=Strict``). Another user of the machine who finds
  the port gets nothing without the token;
- **a CSRF token per session** on every action (a form field or the
  ``X-CSRF-Token`` header), an HMAC of the session id under a key made at
  start: another site the admin visits cannot forge it;
- **an Origin check** on every action, and a Host check on every request (the
  app's ``TrustedHostMiddleware``), so a DNS-rebound name cannot reach it.

    guard = Guard()
    sid = guard.login(token_from_url)           # None if the token is wrong
    form_token = guard.csrf_token(sid)
    guard.check_action(sid, form_token, origin="http://127.0.0.1:8765",
                       referer=None, host="127.0.0.1:8765")   # raises ActionRefused
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from urllib.parse import urlsplit

__all__ = ["COOKIE", "CSRF_HEADER", "ActionRefused", "Guard", "same_origin"]

#: The session cookie's name.
COOKIE = "shoal_dashboard"
#: Header the page's scripts send the CSRF token in (forms send ``csrf_token``).
CSRF_HEADER = "x-csrf-token"
#: Sessions kept at most; the oldest is forgotten first.
MAX_SESSIONS = 1000


class ActionRefused(Exception):
    """A request that may not change anything; the message says why."""


def same_origin(origin: str | None, referer: str | None, host: str | None) -> bool:
    """True when the request came from a page of this dashboard: ``Origin``
    (or, lacking it, ``Referer``) names ``http://<host>``. A request naming
    neither is refused: every browser sends ``Origin`` on a POST."""
    if not host:
        return False
    source = origin if origin and origin != "null" else referer
    if not source:
        return False
    parts = urlsplit(source)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


class Guard:
    """Login tokens, sessions and CSRF tokens of one dashboard process."""

    def __init__(self, *, login_token: str | None = None, max_sessions: int = MAX_SESSIONS) -> None:
        self.login_token = login_token or secrets.token_urlsafe(24)
        self._key = secrets.token_bytes(32)
        self._max = max_sessions
        self._sessions: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def login(self, token: str | None) -> str | None:
        """A new session id for the right login token; None otherwise."""
        if not token or not hmac.compare_digest(token.encode(), self.login_token.encode()):
            return None
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[sid] = time.time()
            while len(self._sessions) > self._max:
                self._sessions.popitem(last=False)
        return sid

    def valid(self, sid: str | None) -> bool:
        """Whether ``sid`` is a session this process opened."""
        if not sid:
            return False
        with self._lock:
            return sid in self._sessions

    def csrf_token(self, sid: str) -> str:
        """The CSRF token of session ``sid`` (the same for its whole life)."""
        return hmac.new(self._key, b"csrf:" + sid.encode(), hashlib.sha256).hexdigest()

    def check_action(
        self,
        sid: str | None,
        token: str | None,
        *,
        origin: str | None,
        referer: str | None,
        host: str | None,
    ) -> None:
        """Raise :class:`ActionRefused` unless a logged-in page of this
        dashboard sent the request with its session's CSRF token."""
        if not self.valid(sid):
            raise ActionRefused("not logged in: open the URL `shoal dashboard` printed")
        assert sid is not None
        if not same_origin(origin, referer, host):
            raise ActionRefused("the request did not come from this dashboard's pages")
        if not token or not hmac.compare_digest(token, self.csrf_token(sid)):
            raise ActionRefused("missing or wrong CSRF token: reload the page and try again")
