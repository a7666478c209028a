"""shoal: a federated-learning runtime.

A server hands each site the global model, each site trains on its own data and
sends back only weights, the server aggregates them into the next model.
"""

from __future__ import annotations

from shoal.errors import (
    ArrayFormatError,
    ConfigError,
    IntegrityError,
    JobFailedError,
    JobValidationError,
    KitError,
    NotAuthorizedError,
    NotFoundError,
    PeerRejectedError,
    ProvisionError,
    ShoalError,
    TransportError,
    UnavailableError,
)

__version__ = "0.1.0"

__all__ = [
    "ArrayFormatError",
    "ConfigError",
    "IntegrityError",
    "JobFailedError",
    "JobValidationError",
    "KitError",
    "NotAuthorizedError",
    "NotFoundError",
    "PeerRejectedError",
    "ProvisionError",
    "ShoalError",
    "TransportError",
    "UnavailableError",
    "__version__",
]
