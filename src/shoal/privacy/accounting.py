"""ε of the Gaussian mechanism, composed over rounds, from ``dp-accounting``.

Each round of central DP-FedAvg (and each result a site noises itself) is a
Gaussian mechanism with noise multiplier ``z`` (noise std over the
sensitivity); when a round asks a fraction ``q`` of the sites, it is that
mechanism on a Poisson sample of rate ``q`` (McMahan et al. 2018 account
their fixed-size sample the same way). Google's RDP accountant composes the
rounds and converts to (ε, δ)::

    gaussian_epsilon(noise_multiplier=1.1, sampling_fraction=0.1, rounds=100, delta=1e-5)

Never a formula written here: the accountant is maintained and reviewed.
"""

from __future__ import annotations

import math

__all__ = ["RDP_ORDERS", "gaussian_epsilon"]

#: Rényi orders the accountant tries. Integer orders only: the library's
#: fractional-order series does not always converge (it then logs and drops
#: the order), and integer orders bound ε as tightly for the z we meet.
RDP_ORDERS = (*range(2, 257), 320, 384, 512, 768, 1024)


def gaussian_epsilon(
    *, noise_multiplier: float, sampling_fraction: float, rounds: int, delta: float
) -> float:
    """ε after ``rounds`` Gaussian mechanisms of noise multiplier
    ``noise_multiplier``, each on a Poisson sample of rate
    ``sampling_fraction`` (1: everyone), at ``delta``. 0 rounds: 0;
    no noise: infinity."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    try:
        import dp_accounting
        from dp_accounting import rdp
    except ImportError as exc:  # an optional extra
        raise ImportError(
            "differential privacy accounting needs dp-accounting: pip install 'shoal[dp]'"
        ) from exc
    event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_fraction < 1:
        event = dp_accounting.PoissonSampledDpEvent(sampling_fraction, event)
    accountant = rdp.RdpAccountant(orders=list(RDP_ORDERS))
    accountant.compose(event, rounds)
    return float(accountant.get_epsilon(delta))
