"""Receiver process for the 1 GiB transfer test.

    python _receiver.py SERVER_KIT DEST_DIR

Serves ``test.Transfer`` with the server kit's mutual TLS on 127.0.0.1:0,
prints the bound port on stdout, and serves until stdin closes. Its memory is
read from outside, through /proc/PID/status.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _service import transfer_handler  # noqa: E402

from shoal.provision import load_kit  # noqa: E402
from shoal.transport import start_server  # noqa: E402


def main() -> None:
    kit = load_kit(Path(sys.argv[1]), expected_type="server")
    dest = Path(sys.argv[2])
    handler = transfer_handler(dest, max_size=4 * 1024**3)
    server, port = start_server(
        host="127.0.0.1",
        port=0,
        tls=kit.tls,
        register=[lambda s: s.add_generic_rpc_handlers((handler,))],
        max_workers=4,
    )
    print(port, flush=True)
    sys.stdin.read()
    server.stop(None).wait(5)


if __name__ == "__main__":
    main()
