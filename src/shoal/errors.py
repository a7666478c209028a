"""shoal's exceptions: one root, a shallow tree.

    ShoalError
    ├── ConfigError            bad project.yml, job metadata, kit config, CLI input
    │   └── JobValidationError a job refused at submit (archive, metadata, sites)
    ├── KitError               a startup kit is missing files or was tampered with
    ├── ProvisionError         provisioning could not complete (nothing written)
    ├── TransportError         a connection or transfer failed
    │   ├── IntegrityError     a payload's size or hash did not match
    │   ├── PeerRejectedError  the peer refused us (identity, role, protocol)
    │   ├── BusyError          the same thing is under way on another stream: try again shortly
    │   └── UnavailableError   the server was not reached, or went away: try again later
    ├── NotAuthorizedError     an admin command beyond the caller's role
    ├── NotFoundError          no such job, site or file
    ├── ArrayFormatError       a weights file/stream is malformed or does not match
    ├── JobFailedError         a job ended in a failure state
    └── WorkflowSuspended      a workflow stopped at a round boundary; its job resumes

Library code raises these; only the CLI turns them into exit codes.
"""

from __future__ import annotations

__all__ = [
    "ArrayFormatError",
    "BusyError",
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
    "WorkflowSuspended",
]


class ShoalError(Exception):
    """Root of every error shoal raises on purpose."""


class ConfigError(ShoalError):
    """Bad configuration or input: the message names the field and the file."""


class JobValidationError(ConfigError):
    """A job was refused at submit; nothing was stored."""


class KitError(ShoalError):
    """A startup kit is incomplete or its signed files were changed."""


class ProvisionError(ShoalError):
    """Provisioning failed; no partial output was left behind."""


class TransportError(ShoalError):
    """A connection or a transfer failed."""


class IntegrityError(TransportError):
    """A payload's size or SHA-256 did not match what the sender announced."""


class PeerRejectedError(TransportError):
    """The other side refused the request (identity, role or protocol)."""


class BusyError(TransportError):
    """The same request is already under way on another stream (a result of
    this site for this task still arriving): nothing was refused for good,
    and the request may succeed once the other one ends."""


class UnavailableError(TransportError):
    """The server could not be reached, went away mid-call, or the call ran out
    of time: nothing was refused, and the same call may succeed later."""


class NotAuthorizedError(ShoalError):
    """The caller's role does not allow the command; nothing was changed."""


class NotFoundError(ShoalError):
    """No such job, site or file."""


class ArrayFormatError(ShoalError):
    """A weights file or stream is malformed or does not match the model."""


class JobFailedError(ShoalError):
    """A job ended in a failure state (EXECUTION_EXCEPTION, ABORTED, ABANDONED)."""


class WorkflowSuspended(ShoalError):
    """A workflow stopped after checkpointing ``round`` because its server is
    stopping: not a failure, the job resumes from ``round + 1``."""

    def __init__(self, round: int) -> None:
        super().__init__(f"suspended after round {round} (checkpointed) for the server's shutdown")
        self.round = round
