"""Rules for the names that become folder names, certificate CNs and DNS labels.

A participant name is used three ways at once: as a kit folder name, as the
certificate's CN (the identity the server trusts) and, for Kubernetes, as part
of a namespace or service name. The checks here keep all three safe.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = [
    "MAX_NAME_LENGTH",
    "dns_label",
    "is_dns_label",
    "is_hostname",
    "is_ip_address",
    "name_problem",
]

#: X.509 caps CN and O at 64 characters (RFC 5280 ub-common-name).
MAX_NAME_LENGTH = 64

_HOSTNAME_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def name_problem(value: object) -> str | None:
    """Why ``value`` cannot be a project or participant name, or ``None`` if it can.

    >>> name_problem("site-1") is None
    True
    >>> name_problem("..")
    "must not be '..'"
    """
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value:
        return "must not be empty"
    if len(value) > MAX_NAME_LENGTH:
        return f"longer than {MAX_NAME_LENGTH} characters"
    if "/" in value or "\\" in value:
        return "must not contain a path separator"
    if value in {".", ".."}:
        return f"must not be {value!r}"
    if value.startswith("."):
        return "must not start with '.'"
    if any(ch.isspace() for ch in value):
        return "must not contain whitespace"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        return "must not contain control characters"
    return None


def is_ip_address(value: str) -> bool:
    """True for an IPv4 or IPv6 literal such as ``10.0.0.5`` or ``::1``."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def is_hostname(value: str) -> bool:
    """True for a DNS host name (RFC 1123 labels separated by dots)."""
    if not value or len(value) > 253:
        return False
    return all(_HOSTNAME_LABEL.match(label) for label in value.rstrip(".").split("."))


def is_dns_label(value: str) -> bool:
    """True for a Kubernetes-style DNS label: lower case, digits, '-', at most 63."""
    return bool(_DNS_LABEL.match(value))


def dns_label(name: str) -> str:
    """Turn a participant name into a DNS label usable for Kubernetes objects.

    Lower-cases, maps every other character to ``-``, squeezes repeats and
    trims to 63 characters; a label must start with a letter, so a leading
    digit gets an ``p-`` prefix.

    >>> dns_label("admin@nvidia.com")
    'admin-nvidia-com'
    >>> dns_label("Site_1")
    'site-1'
    """
    label = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not label:
        label = "p"
    if label[0].isdigit():
        label = "p-" + label
    return label[:63].rstrip("-")
