"""``shoal provision --init``: a commented project.yml to start from."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from shoal.errors import ConfigError, ProvisionError

__all__ = ["SAMPLE_PROJECT_YML", "write_sample_project"]

logger = logging.getLogger(__name__)

SAMPLE_PROJECT_YML = """\
# shoal project file (NVIDIA FLARE's project.yml format; FLARE files work as-is).
# Run `shoal provision -p project.yml` to write one startup kit per participant
# to workspace/<name>/prod_NN/. See docs/provisioning.md for every key.
api_version: 3
name: example_project
description: Federated learning with one server, two sites and one admin

participants:
  # Exactly one server. Its name is the TLS name every client checks, so it
  # must be a DNS name; clients dial it unless told otherwise (--server).
  - name: server1
    type: server
    org: nvidia
    fed_learn_port: 8002   # sites connect here (Fleet service)
    admin_port: 8003       # admin consoles connect here; health is admin_port + 1
    # Extra DNS names / IPs the server is reached by (added to its certificate):
    # host_names: [fl.example.com, 10.0.0.5]

  # Client sites: each trains on its own data and sends back only weights.
  - name: site-1
    type: client
    org: nvidia
  - name: site-2
    type: client
    org: nvidia

  # Admin users: role is project_admin, org_admin, lead or member.
  - name: admin@nvidia.com
    type: admin
    org: nvidia
    role: project_admin

# Optional: namespaces used by `shoal deploy k8s` ({name} = site name).
# kubernetes:
#   server_namespace: shoal-infra
#   site_namespace: shoal-{name}

# NVFlare `builders:` entries are accepted; each is reported as mapped to
# shoal's built-in equivalent or ignored. shoal needs none.
"""


def write_sample_project(path: Path) -> None:
    """Write :data:`SAMPLE_PROJECT_YML` to ``path``; never overwrite a file.

    Raises ``ConfigError`` if ``path`` exists, ``ProvisionError`` if it cannot
    be written.
    """
    path = Path(path)
    try:
        # O_EXCL: refuse atomically even if someone creates the file meanwhile.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise ConfigError(f"{path}: already exists; not overwriting it") from None
    except OSError as exc:
        raise ProvisionError(f"{path}: cannot write: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(SAMPLE_PROJECT_YML)
    logger.info("wrote sample project file %s", path)
