"""NVIDIA FLARE ``builders:`` entries and what shoal does with each.

NVFlare's ``project.yml`` lists builder classes by import path. shoal has no
plug-in builders (its kit layout is fixed, see docs/architecture.md), but a
FLARE user's file must still work: each entry is either *mapped* (shoal does
the equivalent itself) or *ignored* with a reason. Nothing here ever raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["BuilderNote", "map_builders"]

_PREFIX = "nvflare.lighter.impl."

#: class name -> (status, what shoal does instead)
_KNOWN: Mapping[str, tuple[str, str]] = {
    "workspace.WorkspaceBuilder": (
        "mapped",
        "shoal writes WORKSPACE/<project>/prod_NN/<participant>/ itself",
    ),
    "workspace.DistributionBuilder": (
        "mapped",
        "each run goes to a new prod_NN folder; zip a kit folder to distribute it",
    ),
    "template.TemplateBuilder": (
        "mapped",
        "shoal's start/stop scripts and readme are built in",
    ),
    "static_file.StaticFileBuilder": (
        "mapped",
        "fed_server.json / fed_client.json / fed_admin.json, scripts and local/ files",
    ),
    "cert.CertBuilder": (
        "mapped",
        "shoal's EC P-256 project CA in WORKSPACE/<project>/state/",
    ),
    "signature.SignatureBuilder": (
        "mapped",
        "startup/signature.json signed by the project CA",
    ),
    "helm_chart.HelmChartBuilder": (
        "ignored",
        "Kubernetes manifests come from `shoal deploy k8s`",
    ),
    "docker.DockerBuilder": (
        "ignored",
        "kits run unchanged in shoal's container image (see deploy/ and `shoal deploy`)",
    ),
    "he.HEBuilder": ("ignored", "homomorphic encryption is not supported by shoal"),
    "local_cert.LocalCertBuilder": ("ignored", "shoal issues every certificate from the CA"),
}


@dataclass(frozen=True)
class BuilderNote:
    """What became of one ``builders:`` entry of a project file."""

    index: int
    """Position in the ``builders`` list (0-based)."""
    path: str
    """The entry's ``path`` as written (a Python class path in NVFlare)."""
    status: str
    """``"mapped"`` (shoal does the equivalent) or ``"ignored"``."""
    detail: str
    """What shoal does instead, or why the entry has no effect."""

    def __str__(self) -> str:
        return f"builder {self.path or f'#{self.index}'}: {self.status}: {self.detail}"


def map_builders(entries: list[Any]) -> tuple[BuilderNote, ...]:
    """One note per entry of an NVFlare ``builders:`` list, in order.

    >>> str(map_builders([{"path": "nvflare.lighter.impl.cert.CertBuilder"}])[0])
    "builder nvflare.lighter.impl.cert.CertBuilder: mapped: shoal's EC P-256 project CA in WORKSPACE/<project>/state/"
    """
    return tuple(_note(i, entry) for i, entry in enumerate(entries))


def _note(index: int, entry: Any) -> BuilderNote:
    if not isinstance(entry, Mapping):
        return BuilderNote(index, "", "ignored", "entry is not a mapping with a 'path'")
    path = entry.get("path")
    if not isinstance(path, str) or not path:
        return BuilderNote(index, "", "ignored", "entry has no 'path'")
    key = path[len(_PREFIX) :] if path.startswith(_PREFIX) else None
    if key is not None and key in _KNOWN:
        status, detail = _KNOWN[key]
        args = entry.get("args")
        if status == "mapped" and isinstance(args, Mapping) and args:
            detail += f" (args {', '.join(sorted(map(str, args)))} not used)"
        return BuilderNote(index, path, status, detail)
    return BuilderNote(index, path, "ignored", "no shoal equivalent")
