"""The project's sites as the server knows them: the kit's list, plus every
site that has connected since with a certificate from the project CA.

A site added to a running project (``shoal provision --add site-3``) gets a
kit from the same CA; the server's own kit, signed when it was provisioned,
does not name it. Identity is the certificate: once site-3 has connected,
it is a site of the project like the others (jobs may name it, and
``check_status`` lists it while it is away), with no server restart. The
names are kept in ``STATE_DIR/sites.json`` so a restart does not forget them.

    sites = KnownSites(state_dir / "sites.json", provisioned=("site-1", "site-2"))
    sites.add("site-3")   # True: new, and saved
    sites.names()         # ("site-1", "site-2", "site-3")
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

__all__ = ["KnownSites"]

log = logging.getLogger(__name__)


class KnownSites:
    """Thread-safe set of site names, saved whenever it grows."""

    def __init__(self, path: Path, *, provisioned: Iterable[str]) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._provisioned = tuple(provisioned)
        self._joined: list[str] = []
        try:
            doc = json.loads(path.read_text())
            self._joined = [str(n) for n in doc.get("joined", []) if isinstance(n, str)]
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError) as exc:
            # Only a convenience: the sites reconnect and are known again.
            log.warning("%s unreadable (%s); sites added since provisioning relearned", path, exc)

    def names(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(dict.fromkeys([*self._provisioned, *self._joined]))

    def add(self, name: str) -> bool:
        """Know ``name`` from now on; True when it was new (and is now saved)."""
        with self._lock:
            if name in self._provisioned or name in self._joined:
                return False
            self._joined.append(name)
            joined = list(self._joined)
        tmp = self._path.with_name(self._path.name + ".tmp")
        tmp.write_text(json.dumps({"joined": joined}) + "\n")
        os.replace(tmp, self._path)
        log.info("site %s joined the project (not in the server kit; known from now on)", name)
        return True
