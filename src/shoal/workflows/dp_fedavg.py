"""Central DP-FedAvg (McMahan et al., "Learning Differentially Private
Recurrent Language Models", ICLR 2018), with fixed or adaptive clipping
(Andrew et al., "Differentially Private Learning with Adaptive Clipping",
NeurIPS 2021).

The round driver with three policies: the server clips each site's update
(its weights minus the round's global model) to L2 norm ``C``
(``prepare_result``), averages the clipped updates *unweighted* (each site
one vote: a site's influence, not its example count, is what is bounded),
and adds N(0, σ²) with ``σ = z · C / m`` to the mean (``m``: the results
folded this round, so the sum's sensitivity ``C`` becomes ``C / m``). The
guarantee is user-level (here: site-level) (ε, δ)-DP towards whoever sees
the global models, computed after every round with ``dp-accounting``
(``shoal.privacy.accounting``) for the Gaussian mechanism on a Poisson
sample of rate ``q`` (the fraction of sites a round asks), and recorded
with the round (``dp_epsilon`` in the round's server metrics). With
``sample_fraction < 1`` the sites are sampled with a secret seed (the
amplification needs a sample nobody can predict; ``secret_sampling``). With
``max_epsilon`` the job ends, completed, before a round that would pass it::

    workflow:
      name: dp_fedavg
      num_rounds: 50
      noise_multiplier: 1.0     # z
      clip_norm: 0.5            # C (the initial C when adaptive)
      delta: 1.0e-5
      max_epsilon: 8.0

Adaptive clipping moves ``C`` towards the ``target_quantile`` of the sites'
update norms: with ``b_i = 1`` when site i's norm was at most ``C``,
``b̃ = (Σ b_i + N(0, σ_b²)) / m`` and ``C ← C · exp(-η_C (b̃ - γ))``. The
server counts the ``b_i`` itself (it sees the updates: central DP trusts
it), so no site can lie about its bit. The count is noised and the
update's noise multiplier becomes ``z_Δ = (z⁻² - (2σ_b)⁻²)^(-1/2)``, so the
pair costs what one Gaussian mechanism of multiplier ``z`` costs (the
paper's Theorem 1): the accounting is unchanged. ``σ_b`` must exceed ``z/2``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shoal.aggregation import Aggregator, weighted_mean
from shoal.errors import JobValidationError
from shoal.privacy.accounting import gaussian_epsilon
from shoal.privacy.dp import add_gaussian, clip_toward, noise_rng
from shoal.workflows.api import WorkflowContext
from shoal.workflows.driver import RoundParams, needs_initial_model, run_rounds, select_sites
from shoal.workflows.params import load_params, param
from shoal.workflows.policies import Policies, ServerState, UpdateResult

__all__ = ["CentralDP", "DPFedAvgParams", "check_spec", "parse_params", "run"]


@dataclass(frozen=True)
class DPFedAvgParams(RoundParams):
    """``dp_fedavg``: the driver's parameters and the mechanism's."""

    noise_multiplier: float = param(
        1.0,
        doc="z: the noise's std over the clip norm (the update's sensitivity)",
        lo=0,
        lo_open=True,
        hi=1e6,
    )
    clip_norm: float = param(
        1.0,
        doc="C: each site's update is clipped to this L2 norm (adaptive: the initial C)",
        lo=0,
        lo_open=True,
        hi=1e12,
    )
    adaptive_clipping: bool = param(
        False, doc="move C towards target_quantile of the update norms (Andrew et al. 2021)"
    )
    target_quantile: float = param(
        0.5, doc="adaptive: the fraction of updates C should not clip (gamma)", lo=0, hi=1
    )
    clip_learning_rate: float = param(
        0.2, doc="adaptive: eta_C of the geometric update of C", lo=0, lo_open=True, hi=10
    )
    clip_count_stddev: float = param(
        0.0,
        doc="adaptive: sigma_b, the noise on the count of unclipped updates; must be > z/2 "
        "(the paper suggests the expected number of sites / 20)",
        lo=0,
        hi=1e6,
    )
    delta: float = param(
        1e-5, doc="the delta at which epsilon is computed", lo=0, lo_open=True, hi=1, hi_open=True
    )
    max_epsilon: float = param(
        0.0,
        doc="the job ends, completed, before a round that would pass this epsilon (0: no budget)",
        lo=0,
        hi=1e6,
    )
    secret_sampling: bool = param(
        True,
        doc="with sample_fraction < 1, sample the sites with a secret seed (kept in the run "
        "folder) and account for the amplification; false: the job's seed, q = 1",
    )
    noise_seed: int = param(
        0,
        doc="0: the noise comes from a generator seeded by the OS's CSPRNG; "
        "> 0 fixes it (tests only: the seed reveals the noise)",
        lo=0,
        hi=2**63 - 1,
    )


def parse_params(raw: Mapping[str, Any]) -> DPFedAvgParams:
    """Raw ``workflow:`` params -> DPFedAvgParams; JobValidationError names the field."""
    p = load_params(DPFedAvgParams, raw, workflow="dp_fedavg")
    if p.adaptive_clipping and not p.clip_count_stddev > p.noise_multiplier / 2:
        raise JobValidationError(
            "job.yml: workflow.clip_count_stddev: adaptive clipping needs it > "
            f"noise_multiplier / 2 = {p.noise_multiplier / 2:g}, got {p.clip_count_stddev:g} "
            "(the update's noise multiplier is (z^-2 - (2 sigma_b)^-2)^-1/2)"
        )
    return p


#: The initial global model is needed (``server.model`` or ``server.initial_weights``).
check_spec = needs_initial_model("dp_fedavg")


class _Unweighted:
    """The mean of the clipped models, each one vote (``num_examples`` ignored)."""

    def __init__(self, inner: Aggregator) -> None:
        self._inner = inner

    def add(self, arrays: Mapping[str, np.ndarray], weight: float) -> None:
        self._inner.add(arrays, weight=1.0)

    def result(self) -> dict[str, np.ndarray]:
        return self._inner.result()


class CentralDP:
    """The policies of one run: clip each result, noise the mean, account.

    Its counters cover the round being gathered: the driver makes one
    aggregator per round, which resets them."""

    def __init__(self, p: DPFedAvgParams, *, sampling_fraction: float) -> None:
        self.p = p
        self.q = sampling_fraction
        self.rng = noise_rng(p.noise_seed or None)
        self.folded = 0
        self.unclipped = 0

    def update_noise_multiplier(self) -> float:
        """``z``, or with adaptive clipping the update's share ``z_Δ`` of it."""
        z = self.p.noise_multiplier
        if not self.p.adaptive_clipping:
            return z
        return (z**-2 - (2 * self.p.clip_count_stddev) ** -2) ** -0.5

    def clip_norm(self, state: ServerState) -> float:
        c = state.get("clip_norm")
        return float(c) if isinstance(c, float) else self.p.clip_norm

    def epsilon(self, rounds: int) -> float:
        return gaussian_epsilon(
            noise_multiplier=self.p.noise_multiplier,
            sampling_fraction=self.q,
            rounds=rounds,
            delta=self.p.delta,
        )

    def aggregator(self, reuse: Mapping[str, np.ndarray] | None = None) -> Aggregator:
        self.folded = self.unclipped = 0
        return _Unweighted(weighted_mean(reuse))

    def prepare(
        self, arrays: dict[str, np.ndarray], old: Mapping[str, np.ndarray], state: ServerState
    ) -> dict[str, np.ndarray]:
        """A site's weights as the old model plus its update clipped to C."""
        c = self.clip_norm(state)
        out, norm = clip_toward(arrays, old, max_norm=c)
        self.folded += 1
        self.unclipped += int(norm <= c)
        return out

    def update(
        self, old: Mapping[str, np.ndarray], aggregate: dict[str, np.ndarray], state: ServerState, /
    ) -> UpdateResult:
        """The mean plus N(0, (z_Δ · C / m)²); C moved when adaptive."""
        c, m = self.clip_norm(state), max(self.folded, 1)
        std = self.update_noise_multiplier() * c / m
        noised = add_gaussian(aggregate, std=std, rng=self.rng, in_place=True)
        rounds = int(state.get("rounds") or 0) + 1
        new: ServerState = {
            "rounds": rounds,
            "clip_norm": c,
            "epsilon": self.epsilon(rounds),
            "noise_std": std,
        }
        if self.p.adaptive_clipping:
            noisy = (self.unclipped + float(self.rng.normal(0.0, self.p.clip_count_stddev))) / m
            new["unclipped_fraction"] = noisy
            new["clip_norm"] = c * math.exp(
                -self.p.clip_learning_rate * (noisy - self.p.target_quantile)
            )
            new["clip_norm_used"] = c
        return UpdateResult(params=noised, state=new)

    def round_metrics(self, state: ServerState) -> dict[str, float]:
        """What the round's metrics line records: ε so far, at the job's δ,
        the C this round clipped to and the noise it added."""
        used = state.get("clip_norm_used", state.get("clip_norm"))
        out = {
            "dp_epsilon": float(state["epsilon"]),  # type: ignore[arg-type]
            "dp_delta": self.p.delta,
            "dp_clip_norm": float(used),  # type: ignore[arg-type]
            "dp_noise_std": float(state["noise_std"]),  # type: ignore[arg-type]
        }
        if "unclipped_fraction" in state:
            out["dp_unclipped_fraction"] = float(state["unclipped_fraction"])  # type: ignore[arg-type]
        return out

    def stop_before(self, k: int, state: ServerState) -> str | None:
        """A reason to end the job before round ``k``: it would pass ``max_epsilon``."""
        if not self.p.max_epsilon:
            return None
        eps = self.epsilon(k)
        if eps <= self.p.max_epsilon:
            return None
        return (
            f"privacy budget: round {k} would bring epsilon to {eps:.4g} at delta "
            f"{self.p.delta:g}, over max_epsilon={self.p.max_epsilon:g}; "
            f"the final model is round {k - 1}'s"
        )


#: The secret seed of a run's site sampling, in its run folder (kept for resume).
SEED_FILE = "dp_sampling_seed"


def secret_seed(run_dir: Path) -> int:
    """This run's sampling seed: drawn from the OS's CSPRNG on first use and
    kept (0600) in the run folder, so a resumed run samples as before."""
    path = run_dir / SEED_FILE
    try:
        return int(path.read_text())
    except FileNotFoundError:
        pass
    seed = secrets.randbits(63)
    tmp = path.with_name(f".{SEED_FILE}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(str(seed))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return seed


def sampling(ctx: WorkflowContext, p: DPFedAvgParams) -> tuple[DPFedAvgParams, float]:
    """The params the rounds run with, and the sampling rate ``q`` the
    accountant may use.

    Amplification by sampling needs a sample nobody outside the server can
    predict: with ``secret_sampling`` the driver's seed is replaced by a
    secret one (:func:`secret_seed`); without it the job's ``seed`` (public
    in job.yml) picks the sites and the accountant takes ``q = 1``."""
    sites = sorted(ctx.comm.sites())
    if p.sample_fraction < 1 and p.secret_sampling:
        p = dataclasses.replace(p, seed=secret_seed(ctx.run_dir))
    asked = select_sites(
        sites, 1, fraction=p.sample_fraction, min_clients=int(ctx.spec.min_clients), seed=p.seed
    )
    q = len(asked) / max(len(sites), 1)
    if q < 1 and not p.secret_sampling:
        ctx.logger.warning(
            "dp_fedavg: the sites are sampled with job.yml's seed, which is public: "
            "epsilon is accounted without amplification by sampling (q = 1)"
        )
        q = 1.0
    return p, q


def run(ctx: WorkflowContext) -> None:
    """Run (or resume) central DP-FedAvg; see ``shoal.workflows.driver``."""
    p, q = sampling(ctx, parse_params(ctx.params))
    dp = CentralDP(p, sampling_fraction=q)
    ctx.logger.info(
        "dp_fedavg: z=%g, C=%g%s, q=%.3g, delta=%g%s",
        p.noise_multiplier,
        p.clip_norm,
        " (adaptive)" if p.adaptive_clipping else "",
        dp.q,
        p.delta,
        f", max_epsilon={p.max_epsilon:g}" if p.max_epsilon else "",
    )
    policies = Policies(
        aggregator=dp.aggregator,
        update=dp.update,
        prepare_result=dp.prepare,
        round_metrics=dp.round_metrics,
        stop_before=dp.stop_before,
    )
    run_rounds(ctx, p, policies, workflow="dp_fedavg")
