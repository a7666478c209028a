"""Experiment tracking: a job's parameters, per-round metrics and final model,
streamed to TensorBoard, MLflow and Weights & Biases (``tracking:`` in job.yml).

A tracker is one small object (:class:`Tracker`); :class:`Trackers` fans a
workflow's calls out to the job's trackers::

    with workflow_trackers(ctx, store.tensorboard_dir) as tb:   # params logged
        tb.add_scalars({"server/accuracy": 0.97}, step=3)
        tb.log_model(final_model_path)
    # closed FINISHED; FAILED if the block raised, KILLED if the run was suspended

Tracking never fails a job: a tracker that raises (a server down, a full
disk, a missing package) is logged once and dropped for the rest of the
job; the others go on. TensorBoard is one tracker among them and gets every
scalar, as the run folder's event files always did. MLflow and W&B get the
global metrics, and each site's (``sites/<site>/<metric>``) when
``tracking.site_metrics`` is ``server`` and the site lets its metrics leave
(:func:`metrics_may_leave`): a site that does not marks its results
(:data:`PRIVATE_META`) and runs no tracker of its own.

MLflow and W&B are the optional ``track`` extra, imported only by a job
that asks for them (about 1 s and 0.4 s). A resumed run (after a server
restart) goes on in the same MLflow/W&B run: their ids are kept in the run
folder's ``tracking.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from shoal.errors import ShoalError, WorkflowSuspended
from shoal.tensorboard import ScalarWriter

if TYPE_CHECKING:  # shoal.jobs imports the workflows, which import this module
    from shoal.jobs.tracking import MlflowSpec, TrackingSpec, WandbSpec

__all__ = [
    "PRIVATE_META",
    "STATE_FILE",
    "MlflowTracker",
    "TensorBoardTracker",
    "Tracker",
    "Trackers",
    "WandbTracker",
    "job_params",
    "metrics_may_leave",
    "open_trackers",
    "private_sites",
    "workflow_trackers",
]

log = logging.getLogger(__name__)

#: A result's meta key saying "this site's metrics stay in the federation".
PRIVATE_META = "shoal.metrics_private"
#: In the run folder: the MLflow/W&B run ids, so a resumed job goes on in them.
STATE_FILE = "tracking.json"
#: The site's policy file and its key (docs/observability.md).
POLICY_FILE = "policy.yml"
POLICY_KEY = "metrics_may_leave"
#: Longest parameter value sent (MLflow keeps 6000 characters).
MAX_PARAM_CHARS = 500
_NOT_IN_KEY = re.compile(r"[^A-Za-z0-9_\-./ ]")


def metrics_may_leave(kit_root: Path) -> bool:
    """Whether this site lets its training metrics go to experiment trackers
    (the server's, or a tracker of the job's run at the site).

    Read from ``local/policy.yml`` in the site's kit, key
    ``metrics_may_leave`` (true or false), by the site policy's parser
    (``shoal.client.policy``); true when the file or the key is absent. A
    value that is not a boolean is a ConfigError: a typo must not read as
    consent.
    """
    from shoal.client.policy import load_policy

    return load_policy(Path(kit_root) / "local" / POLICY_FILE).metrics_may_leave


def private_sites(results: Iterable[Any]) -> set[str]:
    """The sites whose results say their metrics may not leave (``PRIVATE_META``)."""
    return {r.site for r in results if getattr(r, "meta", {}).get(PRIVATE_META) is True}


class Tracker(Protocol):
    """One destination of a job's tracking."""

    #: Named in log lines ("mlflow").
    name: str
    #: Whether it gets every site's metrics (TensorBoard, in the run folder)
    #: or only those allowed to leave.
    local: bool

    def log_params(self, params: Mapping[str, str]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_model(self, path: Path) -> None: ...
    def close(self, status: str) -> None:
        """``status``: FINISHED, FAILED or KILLED (stopped, to be resumed)."""


class TensorBoardTracker:
    """Scalars in TensorBoard event files (``shoal.tensorboard``)."""

    name = "tensorboard"
    local = True

    def __init__(self, logdir: Path) -> None:
        self._writer = ScalarWriter(logdir)

    def log_params(self, params: Mapping[str, str]) -> None:
        """Event files hold scalars only; the parameters are in job.yml."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._writer.add_scalars(metrics, step=step)

    def log_model(self, path: Path) -> None:
        """The model is in the run folder already."""

    def close(self, status: str) -> None:
        self._writer.close()


def _need(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ShoalError(
            f"tracking needs {module.split('.')[0]} ({exc}); install shoal's track extra: "
            "pip install 'shoal[track]'"
        ) from None


def _store_uri(uri: str, base: Path) -> str:
    """A path (relative to ``base``) as a SQLite store; ``sqlite:///rel.db`` likewise."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return f"sqlite:///{(base / uri).resolve()}"
    if scheme == "sqlite" and rest.startswith("/") and not rest.startswith("//"):
        path = Path(rest[1:])
        return f"sqlite:///{path if path.is_absolute() else (base / path).resolve()}"
    return uri


def _key(name: str) -> str:
    """A metric or parameter name MLflow accepts."""
    return _NOT_IN_KEY.sub("_", name)[:250] or "_"


class MlflowTracker:
    """A run in an MLflow tracking store, through ``MlflowClient`` (no global state)."""

    name = "mlflow"
    local = False

    def __init__(
        self,
        spec: MlflowSpec,
        *,
        base: Path,
        experiment: str,
        run_name: str,
        run_id: str | None = None,
    ) -> None:
        mlflow_client = _need("mlflow.tracking")
        self.uri = _store_uri(spec.tracking_uri, base)
        self.spec = spec
        self._client = mlflow_client.MlflowClient(tracking_uri=self.uri)
        found = self._client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            artifacts = None
            if self.uri.startswith("sqlite:///"):
                # Beside the database, not in whatever folder the process runs in.
                artifacts = (Path(self.uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
            experiment_id = self._client.create_experiment(experiment, artifact_location=artifacts)
        if run_id is not None:
            self.run_id = run_id
            self._client.update_run(run_id, status="RUNNING")
        else:
            run = self._client.create_run(experiment_id, run_name=run_name, tags=dict(spec.tags))
            self.run_id = run.info.run_id

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        self._client.log_batch(
            self.run_id, params=[Param(_key(k), v) for k, v in params.items()], synchronous=True
        )

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(_key(k), float(v), now, step) for k, v in metrics.items()]
        # log_batch takes at most 1000 metrics a call.
        for i in range(0, len(batch), 1000):
            self._client.log_batch(self.run_id, metrics=batch[i : i + 1000], synchronous=True)

    def log_model(self, path: Path) -> None:
        if self.spec.log_model:
            self._client.log_artifact(self.run_id, str(path), artifact_path="model")

    def close(self, status: str) -> None:
        self._client.set_terminated(self.run_id, status=status)


class WandbTracker:
    """A Weights & Biases run (``mode: offline`` writes it under ``dir`` for ``wandb sync``)."""

    name = "wandb"
    local = False

    def __init__(
        self, spec: WandbSpec, *, base: Path, run_name: str, run_id: str | None = None
    ) -> None:
        wandb = _need("wandb")
        self.spec = spec
        folder = Path(spec.dir) if spec.dir else base
        folder = folder if folder.is_absolute() else base / folder
        folder.mkdir(parents=True, exist_ok=True)
        self._wandb = wandb
        self._run = wandb.init(
            project=spec.project,
            entity=spec.entity,
            mode=spec.mode,
            dir=str(folder),
            name=run_name,
            id=run_id,
            resume="allow" if run_id else None,
            tags=list(spec.tags),
            reinit="create_new",
            settings=wandb.Settings(console="off", silent=True, save_code=False),
        )
        self.run_id = str(self._run.id)

    def log_params(self, params: Mapping[str, str]) -> None:
        self._run.config.update(dict(params), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._run.log(dict(metrics), step=step)

    def log_model(self, path: Path) -> None:
        if self.spec.log_model:
            artifact = self._wandb.Artifact(f"{self._run.name or 'shoal'}-model", type="model")
            artifact.add_file(str(path))
            self._run.log_artifact(artifact)

    def close(self, status: str) -> None:
        self._run.finish(exit_code=0 if status == "FINISHED" else 1)


class Trackers:
    """The job's trackers behind one call each; one that fails is dropped (see module)."""

    def __init__(
        self,
        trackers: Sequence[Tracker],
        *,
        site_metrics: str = "server",
        logger: logging.Logger | None = None,
    ) -> None:
        self.active: list[Tracker] = list(trackers)
        #: ``tracking.site_metrics``: whether per-site metrics leave (``server``).
        self.site_metrics = site_metrics
        self.log = logger or log
        self._closed = False

    def _each(self, what: str, call: Any) -> None:
        for tracker in list(self.active):
            try:
                call(tracker)
            except Exception as exc:  # tracking must never fail a job
                self.log.warning(
                    "tracking: %s failed to %s (%s: %s); no more tracking to %s for this job",
                    tracker.name,
                    what,
                    type(exc).__name__,
                    exc,
                    tracker.name,
                )
                self.active.remove(tracker)
                with contextlib.suppress(Exception):
                    tracker.close("FAILED")

    def log_params(self, params: Mapping[str, str]) -> None:
        self._each("log the parameters", lambda t: t.log_params(params))

    def add_scalars(
        self, values: Mapping[str, float], step: int, *, private: Iterable[str] = ()
    ) -> None:
        """Round ``step``'s scalars; ``sites/<site>/...`` keys go to remote
        trackers only if site metrics go to the server and ``<site>`` is not
        in ``private``."""
        hidden = {f"sites/{s}/" for s in private}
        shared = {
            k: v
            for k, v in values.items()
            if not k.startswith("sites/")
            or (self.site_metrics == "server" and not any(k.startswith(h) for h in hidden))
        }
        self._each(
            f"log round {step}",
            lambda t: t.log_metrics(values if t.local else shared, step),
        )

    def log_model(self, path: Path) -> None:
        self._each("upload the model", lambda t: t.log_model(path))

    def close(self, status: str = "FINISHED") -> None:
        if self._closed:
            return
        self._closed = True
        self._each("close its run", lambda t: t.close(status))
        self.active.clear()

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, kind: object, exc: BaseException | None, trace: object) -> None:
        """Ends the runs as the job's block ended: FINISHED, KILLED (suspended), FAILED."""
        if exc is None:
            self.close("FINISHED")
        elif isinstance(exc, WorkflowSuspended):
            self.close("KILLED")
        else:
            self.close("FAILED")


def _flat(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flat(f"{prefix}.{k}", v, out)
    else:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        out[prefix] = text[:MAX_PARAM_CHARS]


def job_params(spec: Any, job_id: str, sites: Sequence[str]) -> dict[str, str]:
    """What a run records as its parameters: the job, its workflow's
    parameters, its sites and ``client.config``."""
    out = {"job.name": spec.name, "job.id": job_id, "workflow": spec.workflow.name}
    _flat("workflow", dict(spec.workflow.params), out)
    out["min_clients"] = str(spec.min_clients)
    out["sites"] = ",".join(sites)[:MAX_PARAM_CHARS]
    _flat("client.config", dict(getattr(spec.client, "config", {}) or {}), out)
    return out


def _read_state(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


def open_trackers(
    tracking: TrackingSpec,
    *,
    base: Path,
    job_name: str,
    job_id: str,
    tensorboard_dir: Path | None = None,
    site: str | None = None,
    logger: logging.Logger | None = None,
) -> Trackers:
    """The trackers ``tracking`` asks for, for the server's run (``site``
    None) or one site's; ``base`` holds relative stores and ``tracking.json``.
    A tracker that cannot start is logged and left out."""
    logger = logger or log
    run_name = f"{job_name}-{job_id[:8]}" + (f"-{site}" if site else "")
    state_path = base / STATE_FILE
    state = _read_state(state_path)
    made: list[Tracker] = []

    def start(name: str, make: Any) -> None:
        try:
            tracker = make()
        except Exception as exc:  # tracking must never fail a job
            logger.warning("tracking: %s did not start (%s: %s); the job goes on without it",
                           name, type(exc).__name__, exc)  # fmt: skip
            return
        made.append(tracker)
        run_id = getattr(tracker, "run_id", None)
        if run_id:
            state[name] = run_id

    if tracking.tensorboard and tensorboard_dir is not None:
        start("tensorboard", lambda: TensorBoardTracker(tensorboard_dir))
    if tracking.mlflow is not None:
        m = tracking.mlflow
        start(
            "mlflow",
            lambda: MlflowTracker(
                m,
                base=base,
                experiment=m.experiment or job_name,
                run_name=(f"{m.run_name}-{site}" if site else m.run_name)
                if m.run_name
                else run_name,
                run_id=state.get("mlflow"),
            ),
        )
    if tracking.wandb is not None:
        w = tracking.wandb
        start(
            "wandb",
            lambda: WandbTracker(w, base=base, run_name=run_name, run_id=state.get("wandb")),
        )
    if any(not t.local for t in made):
        with contextlib.suppress(OSError):
            base.mkdir(parents=True, exist_ok=True)
            state_path.write_text(json.dumps(state))
    logger.info(
        "tracking %s to %s",
        f"site {site}" if site else "the job",
        ", ".join(t.name for t in made) or "nothing",
    )
    return Trackers(made, site_metrics=tracking.site_metrics, logger=logger)


def workflow_trackers(ctx: Any, tensorboard_dir: Path) -> Trackers:
    """The server-side trackers of a workflow run (``ctx``: a WorkflowContext),
    with the job's parameters logged."""
    from shoal.jobs.tracking import TrackingSpec

    spec = ctx.spec
    tracking = getattr(spec, "tracking", None) or TrackingSpec()
    trackers = open_trackers(
        tracking,
        base=Path(ctx.run_dir),
        job_name=spec.name,
        job_id=ctx.job_id,
        tensorboard_dir=tensorboard_dir,
        logger=ctx.logger,
    )
    trackers.log_params(job_params(spec, ctx.job_id, list(ctx.comm.sites())))
    return trackers
