"""Filters: ordered transformations of what crosses a boundary.

A filter is a callable ``(FLModel, FilterContext) -> FLModel``. Four points
of a job run filters, each an ordered chain:

==============  ======================================  ==========================
point           what passes                             where it runs
==============  ======================================  ==========================
``task_in``     a task (the global model) a site got    the site, before the script
``result_out``  a result a site sends                   the site, in ``fl.send()``
``result_in``   a result the server received            the server, before the fold
``model_out``   the global model the server publishes   the server, before scatter
==============  ======================================  ==========================

A job names its filters in job.yml; a site names its own in its kit
(``local/filters.yml``, same format, site points only). A site's filters
always run and sit nearest the outside world: **first** on what comes in,
**last** on what goes out, so that nothing a job adds runs between a site's
filter and the network. Every entry is a registered name (:data:`BUILTIN`)
or ``"module:attr"`` naming a factory, called once with the entry's ``args``
to build the filter::

    filters:
      result_out:
        - {filter: clip, args: {max_norm: 1.0}}
        - {filter: myfilters:Scrub, args: {level: 2}}

Job filters resolve inside the job's ``app/``; site filters resolve in the
site's own Python environment, never in the job's code. The built-in
privacy filters (exclude, clip, Gaussian noise, percentile privacy,
quantization) are ``shoal.filters.builtin`` and ``shoal.filters.quantize``;
their points and arguments are checked when the configuration is read.

Trust: site-side chains run in the job worker's process, through the Client
API every script uses. That keeps a job from *configuring* a site's filter
away; a job whose code bypasses the Client API is a matter for the site's
confinement and policy (docs/security.md).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from shoal.errors import ConfigError, JobValidationError
from shoal.filters.context import FilterContext

if TYPE_CHECKING:
    from shoal.client.model import FLModel

__all__ = [
    "BUILTIN",
    "POINTS",
    "SERVER_POINTS",
    "SITE_POINTS",
    "Filter",
    "FilterChain",
    "FilterContext",
    "FilterSpec",
    "Identity",
    "build_chain",
    "parse_filters",
    "site_order",
    "specs_from_json",
    "specs_to_json",
    "with_params",
]

log = logging.getLogger(__name__)

#: Filter points on a site, then on the server.
SITE_POINTS = ("task_in", "result_out")
SERVER_POINTS = ("result_in", "model_out")
POINTS = SITE_POINTS + SERVER_POINTS
#: Most filters at one point.
MAX_FILTERS = 32


class Filter(Protocol):
    def __call__(self, model: FLModel, ctx: FilterContext) -> FLModel: ...


class Identity:
    """Passes the model through unchanged (the seam's test filter)."""

    def __call__(self, model: FLModel, ctx: FilterContext) -> FLModel:
        return model


#: Filters known by name.
BUILTIN: dict[str, Callable[..., Filter]] = {"identity": Identity}


@dataclass(frozen=True)
class FilterSpec:
    """One chain entry, as configured."""

    #: A name in :data:`BUILTIN` or ``"module:attr"``.
    name: str
    args: Mapping[str, Any] = field(default_factory=dict)
    #: ``"site"`` or ``"job"``: who configured it (and where it resolves).
    source: str = "job"

    def label(self) -> str:
        return f"{self.source}:{self.name}"


def _entry(raw: Any, where: str, source: str, point: str) -> FilterSpec:
    name: Any
    args: Any
    if isinstance(raw, str):
        name, args = raw, {}
    elif isinstance(raw, Mapping):
        unknown = sorted(set(raw) - {"filter", "args"})
        if unknown:
            raise JobValidationError(f"{where}.{unknown[0]}: unknown key (known: filter, args)")
        name, args = raw.get("filter"), raw.get("args") or {}
        if not isinstance(args, Mapping) or not all(isinstance(k, str) for k in args):
            raise JobValidationError(f"{where}.args: must be a mapping with string keys")
    else:
        raise JobValidationError(f"{where}: a filter name or {{filter: NAME, args: {{...}}}}")
    if not isinstance(name, str) or not name:
        raise JobValidationError(f"{where}: filter name required")
    if name in BUILTIN:
        _check_builtin(name, dict(args), where, point)
    else:
        from shoal.workflows.hooks import parse_hook

        try:
            parse_hook(name)
        except JobValidationError:
            raise JobValidationError(
                f"{where}: unknown filter {name!r} (built in: {', '.join(sorted(BUILTIN))}; "
                "or 'module:attr')"
            ) from None
    return FilterSpec(name=name, args=dict(args), source=source)


def _check_builtin(name: str, args: dict[str, Any], where: str, point: str) -> None:
    """A built-in filter's point and arguments, checked when the job (or the
    site's file) is read: building one runs no user code and costs nothing."""
    factory = BUILTIN[name]
    points = getattr(factory, "POINTS", POINTS)
    if point not in points:
        raise JobValidationError(f"{where}: {name} runs at {', '.join(points)}, not at {point}")
    try:
        factory(**args)
    except TypeError as exc:
        raise JobValidationError(f"{where}: {name}: bad arguments {args}: {exc}") from None
    except ValueError as exc:
        raise JobValidationError(f"{where}: {name}: {exc}") from None


def parse_filters(
    raw: Any, *, where: str, points: Sequence[str] = POINTS, source: str = "job"
) -> dict[str, tuple[FilterSpec, ...]]:
    """A ``filters:`` mapping (point -> list of entries), checked.

    Errors are JobValidationError naming ``where.point[i]``; nothing is imported.
    """
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise JobValidationError(f"{where}: must be a mapping of {', '.join(points)} to lists")
    out: dict[str, tuple[FilterSpec, ...]] = {}
    for point, entries in raw.items():
        if point not in points:
            raise JobValidationError(
                f"{where}.{point}: unknown filter point (known: {', '.join(points)})"
            )
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise JobValidationError(f"{where}.{point}: must be a list of filters")
        if len(entries) > MAX_FILTERS:
            raise JobValidationError(f"{where}.{point}: more than {MAX_FILTERS} filters")
        specs = tuple(
            _entry(e, f"{where}.{point}[{i}]", source, str(point)) for i, e in enumerate(entries)
        )
        if specs:
            out[str(point)] = specs
    return out


def specs_to_json(specs: Sequence[FilterSpec]) -> list[dict[str, Any]]:
    return [{"filter": s.name, "args": dict(s.args), "source": s.source} for s in specs]


def specs_from_json(data: Sequence[Mapping[str, Any]]) -> tuple[FilterSpec, ...]:
    return tuple(
        FilterSpec(name=str(d["filter"]), args=dict(d.get("args") or {}), source=str(d["source"]))
        for d in data
    )


def _resolve(spec: FilterSpec, app_dir: Path | None) -> Filter:
    factory: Any
    if spec.name in BUILTIN:
        factory = BUILTIN[spec.name]
    elif spec.source == "job":
        if app_dir is None:
            raise ConfigError(f"filter {spec.label()}: no job app/ folder to load it from")
        from shoal.workflows.hooks import load_attr

        factory = load_attr(app_dir, spec.name)
    else:
        # A site's own filter: from the site's environment, never the job's app/.
        module, _, attr = spec.name.partition(":")
        try:
            factory = importlib.import_module(module)
            for part in attr.split("."):
                factory = getattr(factory, part)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"site filter {spec.name!r} cannot be loaded: {exc}") from exc
    try:
        built = factory(**dict(spec.args))
    except Exception as exc:
        raise ConfigError(
            f"filter {spec.label()}: building it with {dict(spec.args)} failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not callable(built):
        raise ConfigError(f"filter {spec.label()}: {spec.name} did not build a callable filter")
    return built  # type: ignore[no-any-return]


class FilterChain:
    """An ordered list of built filters at one point; empty chains cost nothing."""

    def __init__(self, point: str, filters: Sequence[tuple[FilterSpec, Filter]] = ()) -> None:
        self.point = point
        self._filters = tuple(filters)

    def __bool__(self) -> bool:
        return bool(self._filters)

    @property
    def labels(self) -> list[str]:
        return [spec.label() for spec, _ in self._filters]

    def apply(
        self,
        model: FLModel,
        *,
        job_id: str,
        site: str,
        round: int | None,
        task: str,
        reference: Mapping[str, np.ndarray] | None = None,
    ) -> FLModel:
        """``model`` through every filter in order; a filter that fails or
        returns something else than an FLModel raises ConfigError naming it."""
        if not self._filters:
            return model
        from shoal.client.model import FLModel

        ctx = FilterContext(
            point=self.point,
            job_id=job_id,
            site=site,
            task=task,
            round=round,
            reference=reference,
        )
        for spec, fn in self._filters:
            try:
                out = fn(model, ctx)
            except Exception as exc:
                raise ConfigError(
                    f"{self.point} filter {spec.label()} failed: {type(exc).__name__}: {exc}"
                ) from exc
            if not isinstance(out, FLModel):
                raise ConfigError(
                    f"{self.point} filter {spec.label()} returned {type(out).__name__}, "
                    "not an FLModel"
                )
            model = out
        log.info(
            "%s filters ran on %s (round %s): %s",
            self.point,
            site,
            round,
            ", ".join(self.labels),
        )
        return model


def build_chain(point: str, specs: Sequence[FilterSpec], *, app_dir: Path | None) -> FilterChain:
    """Build the filters of one point (imports and calls their factories)."""
    return FilterChain(point, [(s, _resolve(s, app_dir)) for s in specs])


def site_order(
    point: str, site: Sequence[FilterSpec], job: Sequence[FilterSpec]
) -> tuple[FilterSpec, ...]:
    """A site point's chain: the site's filters first on what comes in, last
    on what goes out."""
    if point == "task_in":
        return (*site, *job)
    return (*job, *site)


def with_params(model: FLModel, params: Mapping[str, Any]) -> FLModel:
    """``model`` with other weights (a filter's usual return)."""
    return replace(model, params=params)


def _register_builtins() -> None:
    # Imported last: they import shoal.client, whose api imports this package.
    from shoal.filters.builtin import Clip, ExcludeVars, Gaussian, PercentilePrivacy
    from shoal.filters.quantize import Dequantize, Quantize

    BUILTIN.update(
        {
            "exclude_vars": ExcludeVars,
            "clip": Clip,
            "gaussian": Gaussian,
            "percentile_privacy": PercentilePrivacy,
            "quantize": Quantize,
            "dequantize": Dequantize,
        }
    )


_register_builtins()
