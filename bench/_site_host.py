"""Runs many real SiteDaemon objects in one process, each from its own site kit
(identity = certificate CN, so every site needs its own kit). For bench/scale.py.

    python bench/_site_host.py SERVER_ADDRESS KIT_DIR [KIT_DIR ...]   # until stdin closes
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

from shoal.client.daemon import SiteDaemon, SiteOptions
from shoal.provision import load_kit


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    # Thousands of threads per process: keep their stacks small.
    threading.stack_size(512 * 1024)
    address, kits = sys.argv[1], sys.argv[2:]
    daemons = []
    for k in kits:
        d = SiteDaemon(
            load_kit(Path(k), expected_type="client"), SiteOptions(server_address=address)
        )
        d.start()
        daemons.append(d)
    print("started", len(daemons), flush=True)
    sys.stdin.read()
    for d in daemons:
        d.request_stop()
    for d in daemons:
        d.stop()


if __name__ == "__main__":
    main()
