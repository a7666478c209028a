"""Privacy mechanisms: clipping, Gaussian noise and their accounting; secure aggregation.

``shoal.privacy.dp`` holds the arithmetic the filters (``shoal.filters.builtin``)
and the central DP-FedAvg workflow (``shoal.workflows.dp_fedavg``) share;
``shoal.privacy.accounting`` turns a mechanism's parameters into ε at a δ
with Google's ``dp-accounting`` (never a hand-written bound). docs/privacy.md
says what each protects against. ``shoal.privacy.secagg`` is secure
aggregation (SecAgg+): the server learns only the sum of the updates.
"""

from __future__ import annotations

from shoal.privacy.accounting import gaussian_epsilon
from shoal.privacy.dp import add_gaussian, clip_update, l2_norm, noise_rng, update_of

__all__ = ["add_gaussian", "clip_update", "gaussian_epsilon", "l2_norm", "noise_rng", "update_of"]
