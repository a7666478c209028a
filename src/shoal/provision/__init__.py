"""Provisioning: ``project.yml`` -> a project CA and one signed startup kit per participant.

    from shoal.provision import load_kit, provision

    result = provision(Path("project.yml"), Path("workspace"))
    kit = load_kit(result.kits["site-1"], expected_type="client")
    kit.tls.cert_pem, kit.config["server"]["host"]

Modules: ``project`` (read and validate the file), ``nvflare`` (FLARE
builder entries), ``pki`` (CA, certificates, CRL), ``signing``
(``signature.json``), ``configs`` and ``templates`` (kit files), ``state``
(the never-shipped ``state/`` folder), ``builder`` (``provision()``),
``revocation`` and ``kit`` (loading kits), ``lifecycle`` (renew one
participant, add one) and ``expiry`` (warnings before certificates end).
See docs/provisioning.md.
"""

from __future__ import annotations

from shoal.provision.builder import DEFAULT_VALIDITY_DAYS, ProvisionResult, provision
from shoal.provision.expiry import WARN_DAYS, expiry_warnings
from shoal.provision.kit import Kit, load_kit, verify_kit
from shoal.provision.lifecycle import add_participants, renew
from shoal.provision.names import dns_label
from shoal.provision.nvflare import BuilderNote
from shoal.provision.pki import (
    CA_VALIDITY_DAYS,
    Identity,
    TLSMaterial,
    identity_from_cert,
    load_revoked_serials,
)
from shoal.provision.project import (
    ADMIN_ROLES,
    PARTICIPANT_TYPES,
    KubernetesSettings,
    Participant,
    Project,
    load_project,
)
from shoal.provision.revocation import revoke
from shoal.provision.sample import SAMPLE_PROJECT_YML, write_sample_project

__all__ = [
    "ADMIN_ROLES",
    "CA_VALIDITY_DAYS",
    "DEFAULT_VALIDITY_DAYS",
    "PARTICIPANT_TYPES",
    "SAMPLE_PROJECT_YML",
    "BuilderNote",
    "Identity",
    "Kit",
    "KubernetesSettings",
    "Participant",
    "Project",
    "ProvisionResult",
    "TLSMaterial",
    "WARN_DAYS",
    "add_participants",
    "dns_label",
    "expiry_warnings",
    "identity_from_cert",
    "load_kit",
    "load_project",
    "load_revoked_serials",
    "provision",
    "renew",
    "revoke",
    "verify_kit",
    "write_sample_project",
]
