"""The participant config files: ``fed_server.json``, ``fed_client.json``, ``fed_admin.json``.

Their contents are a contract (docs/architecture.md "Participant config
files"); the runtime reads them through :func:`shoal.provision.load_kit`.
"""

from __future__ import annotations

from typing import Any

from shoal.provision.names import dns_label
from shoal.provision.project import Participant, Project

__all__ = [
    "CONFIG_FORMAT",
    "HEARTBEAT_TIMEOUT_S",
    "config_file_name",
    "participant_config",
]

CONFIG_FORMAT = 1
HEARTBEAT_TIMEOUT_S = 30

_FILE_NAMES = {"server": "fed_server.json", "client": "fed_client.json", "admin": "fed_admin.json"}


def config_file_name(participant_type: str) -> str:
    """``fed_server.json``, ``fed_client.json`` or ``fed_admin.json``."""
    return _FILE_NAMES[participant_type]


def _server_host_names(server: Participant) -> list[str]:
    return list(dict.fromkeys([server.name, "localhost", *server.host_names]))


def participant_config(project: Project, participant: Participant) -> dict[str, Any]:
    """The JSON document written to ``participant``'s ``startup/`` folder."""
    server = project.server
    doc: dict[str, Any] = {
        "format": CONFIG_FORMAT,
        "project": project.name,
        "name": participant.name,
        "type": participant.type,
        "org": participant.org,
    }
    if participant.type == "server":
        doc.update(
            fed_learn_port=server.fed_learn_port,
            admin_port=server.admin_port,
            health_port=server.health_port,
            host_names=_server_host_names(server),
            heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
            participants=[_listing(p) for p in project.participants if p.type != "server"],
            kubernetes={
                "namespace": project.kubernetes.namespace_for(server),
                "service": dns_label(server.name),
            },
        )
    elif participant.type == "client":
        doc["server"] = {
            "name": server.name,
            "host": server.name,
            "fed_learn_port": server.fed_learn_port,
        }
        doc["kubernetes"] = {"namespace": project.kubernetes.namespace_for(participant)}
    else:
        doc["role"] = participant.role
        doc["server"] = {"name": server.name, "host": server.name, "admin_port": server.admin_port}
    return doc


def _listing(p: Participant) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": p.name, "type": p.type, "org": p.org}
    if p.type == "admin":
        entry["role"] = p.role
    return entry
