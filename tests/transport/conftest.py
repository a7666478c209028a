"""A CA made in the test and a small real gRPC service over shoal's transport.

The service (``_service.py``) is served by ``start_server`` with mutual TLS on
127.0.0.1:0.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shoal.provision import Kit, load_kit, provision
from shoal.transport import start_server

from ._service import put_call, transfer_handler, who_am_i_call

PROJECT_YML = """\
api_version: 3
name: {name}
participants:
  - name: server1
    type: server
    org: nvidia
    fed_learn_port: 8002
    admin_port: 8003
  - name: site-1
    type: client
    org: nvidia
  - name: admin@nvidia.com
    type: admin
    org: nvidia
    role: project_admin
"""


def make_kits(folder: Path, project: str) -> dict[str, Kit]:
    folder.mkdir(parents=True, exist_ok=True)
    project_file = folder / "project.yml"
    project_file.write_text(PROJECT_YML.format(name=project))
    result = provision(project_file, folder / "ws")
    return {name: load_kit(path) for name, path in result.kits.items()}


@dataclass
class TransferServer:
    port: int
    dest_dir: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Kit]:
    return make_kits(tmp_path_factory.mktemp("ca"), "transport_project")


@pytest.fixture(scope="module")
def foreign_kits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Kit]:
    """Another project: same participant names, another CA."""
    return make_kits(tmp_path_factory.mktemp("foreign"), "other_project")


@pytest.fixture
def transfer_server(kits: dict[str, Kit], tmp_path: Path) -> Iterator[TransferServer]:
    dest = tmp_path / "received"
    dest.mkdir()
    server, port = start_server(
        host="127.0.0.1",
        port=0,
        tls=kits["server1"].tls,
        register=[lambda s: s.add_generic_rpc_handlers((transfer_handler(dest),))],
        max_workers=8,
    )
    try:
        yield TransferServer(port=port, dest_dir=dest)
    finally:
        server.stop(None).wait(5)


__all__ = ["TransferServer", "make_kits", "put_call", "who_am_i_call"]
