"""Warn before a certificate or the project CA expires.

    for line in expiry_warnings(kit.tls, kit.name):
        log.warning("%s", line)
    # certificate of site-1 expires in 9 days (2027-01-14T10:00:00Z): renew it
    # with `shoal provision --renew site-1` and swap the kit

Daemons check at start and once a day (:class:`ExpiryWatch`), the admin
console at login, and ``check_status`` shows the server's and each site's.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable

from cryptography import x509

from shoal.provision.pki import TLSMaterial

__all__ = ["WARN_DAYS", "ExpiryWatch", "expiry_warnings"]

log = logging.getLogger(__name__)

#: Warnings start this many days before the end of validity.
WARN_DAYS = 30
#: Daemons check again this often.
CHECK_INTERVAL_S = 24 * 3600.0


def _when(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _one(
    cert_pem: bytes, subject: str, advice: str, now: dt.datetime, within_days: int
) -> str | None:
    cert = x509.load_pem_x509_certificate(cert_pem)
    end = cert.not_valid_after_utc
    left = end - now
    if left > dt.timedelta(days=within_days):
        return None
    if left <= dt.timedelta(0):
        return f"{subject} EXPIRED on {_when(end)}: {advice}"
    days = left.days
    span = f"{days} day{'s' if days != 1 else ''}" if days else "less than a day"
    return f"{subject} expires in {span} ({_when(end)}): {advice}"


def expiry_warnings(
    tls: TLSMaterial,
    name: str,
    *,
    within_days: int = WARN_DAYS,
    now: dt.datetime | None = None,
) -> list[str]:
    """One line for each of ``name``'s certificate and the project CA that
    ends within ``within_days`` (or has ended); empty when neither does."""
    now = now or dt.datetime.now(dt.timezone.utc)
    lines = [
        _one(
            tls.cert_pem,
            f"certificate of {name}",
            f"renew it with `shoal provision --renew {name}` and swap the kit",
            now,
            within_days,
        ),
        _one(
            tls.ca_pem,
            "the project CA",
            "a new CA means new kits for every participant: plan it",
            now,
            within_days,
        ),
    ]
    return [line for line in lines if line]


class ExpiryWatch:
    """A daemon's check: logs the warnings now and every day after, and tells
    ``on_change`` each time the list changes (health, status)."""

    def __init__(
        self,
        tls: TLSMaterial,
        name: str,
        *,
        on_change: Callable[[list[str]], None] = lambda warnings: None,
        interval_s: float = CHECK_INTERVAL_S,
    ) -> None:
        self._tls = tls
        self._name = name
        self._on_change = on_change
        self._interval_s = interval_s
        self.warnings: list[str] = []
        self._stop = threading.Event()

    def check(self) -> list[str]:
        """Check now; log each warning."""
        warnings = expiry_warnings(self._tls, self._name)
        for line in warnings:
            log.warning("%s", line)
        if warnings != self.warnings:
            self.warnings = warnings
            self._on_change(warnings)
        return warnings

    def start(self) -> None:
        """Check now, then every ``interval_s`` on a thread of its own."""
        self.check()
        threading.Thread(target=self._loop, name="cert-expiry", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.check()
            except Exception:  # a daemon's watch must not die of one bad read
                log.exception("certificate expiry check failed")
