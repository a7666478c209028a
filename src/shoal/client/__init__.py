"""The site side of shoal: the Client API used in training scripts.

The site daemon lives in ``shoal.client.daemon`` and the job worker's
transport in ``shoal.client.worker``; neither is imported here, so a training
script pays only for the API it uses.
"""

from __future__ import annotations

from shoal.client.api import (
    get_job_id,
    get_site_name,
    init,
    is_evaluate,
    is_running,
    is_submit_model,
    is_train,
    receive,
    send,
    state_dir,
    system_info,
    use_backend,
)
from shoal.client.model import ClientBackend, FLModel

__all__ = [
    "ClientBackend",
    "FLModel",
    "get_job_id",
    "get_site_name",
    "init",
    "is_evaluate",
    "is_running",
    "is_submit_model",
    "is_train",
    "receive",
    "send",
    "state_dir",
    "system_info",
    "use_backend",
]
