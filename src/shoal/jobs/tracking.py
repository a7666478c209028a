"""The ``tracking:`` section of job.yml, as data (parsed by ``shoal.jobs.spec``).

    tracking:
      site_metrics: server          # server | site | none
      mlflow: {tracking_uri: mlflow.db, experiment: mnist}
      wandb: {project: shoal, mode: offline}

``shoal.observe.tracking`` turns it into trackers; docs/observability.md has
the whole format.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SITE_METRICS", "MlflowSpec", "TrackingSpec", "WandbSpec"]


@dataclass(frozen=True)
class MlflowSpec:
    """``tracking.mlflow``: a run per job (and per site, for site-side tracking)."""

    #: A tracking URI (``sqlite:///abs/path.db``, ``http(s)://host:port``) or a
    #: path: a relative one is a SQLite store in the run folder (on the server)
    #: or in the job's state folder (at a site).
    tracking_uri: str
    #: Experiment name; default the job's name.
    experiment: str | None = None
    #: Run name; default ``<job name>-<job id[:8]>`` (``-<site>`` at a site).
    run_name: str | None = None
    #: Tags set on the run.
    tags: Mapping[str, str] = field(default_factory=dict)
    #: Upload the final global model as an artifact.
    log_model: bool = True


@dataclass(frozen=True)
class WandbSpec:
    """``tracking.wandb``: a Weights & Biases run per job (and per site)."""

    #: The W&B project.
    project: str
    #: The team or user; default the API key's.
    entity: str | None = None
    #: ``online`` (needs ``WANDB_API_KEY`` in the job's environment) or ``offline``
    #: (files under ``dir``, uploaded later with ``wandb sync``).
    mode: str = "online"
    #: Where the run's files go; default the run folder (state folder at a site).
    dir: str | None = None
    #: Tags set on the run.
    tags: tuple[str, ...] = ()
    #: Upload the final global model as an artifact.
    log_model: bool = True


#: ``tracking.site_metrics``: where each site's own metrics are tracked.
SITE_METRICS = ("server", "site", "none")


@dataclass(frozen=True)
class TrackingSpec:
    """The optional ``tracking:`` section (docs/observability.md)."""

    #: ``server``: the sites' metrics, sent with their results, go to the
    #: server's trackers too; ``site``: each site's worker sends its own to
    #: trackers of its own (this section's ``mlflow``/``wandb``, from the site);
    #: ``none``: global metrics only. A site's kit may forbid both.
    site_metrics: str = "server"
    #: TensorBoard event files in the run folder (as always).
    tensorboard: bool = True
    mlflow: MlflowSpec | None = None
    wandb: WandbSpec | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"site_metrics": self.site_metrics, "tensorboard": self.tensorboard}
        for key, section in (("mlflow", self.mlflow), ("wandb", self.wandb)):
            if section is not None:
                data = dict(section.__dict__)
                out[key] = {k: v for k, v in data.items() if v is not None}
                out[key]["tags"] = (
                    list(data["tags"]) if isinstance(data["tags"], tuple) else dict(data["tags"])
                )
        return out
