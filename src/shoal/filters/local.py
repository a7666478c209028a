"""A site's own filters: ``local/filters.yml`` in its kit.

    # local/filters.yml
    result_out:
      - {filter: mysite.privacy:Clip, args: {max_norm: 1.0}}

Read at every job start (an edit applies to the next job, no restart), in
the same format as job.yml's ``filters:``, site points only (``task_in``,
``result_out``). Names resolve in the site's own Python environment. A file
that does not parse fails the job's start with the reason, rather than run
the job without the filters the site asked for.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from shoal._yaml import NoAliasLoader
from shoal.errors import ConfigError, JobValidationError
from shoal.filters import SITE_POINTS, FilterSpec, parse_filters

__all__ = ["FILTERS_FILE", "local_filters"]

#: Where a site's own filters are configured, relative to its kit.
FILTERS_FILE = Path("local") / "filters.yml"
_MAX_BYTES = 256 * 1024


def local_filters(kit_root: Path) -> dict[str, tuple[FilterSpec, ...]]:
    """The site's filters by point; ``{}`` when the kit has no filters file."""
    path = kit_root / FILTERS_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from exc
    if len(raw) > _MAX_BYTES:
        raise ConfigError(f"{path}: {len(raw)} bytes, more than {_MAX_BYTES}")
    try:
        doc = yaml.load(raw, Loader=NoAliasLoader)  # noqa: S506 - a SafeLoader without aliases
        return parse_filters(doc, where=str(FILTERS_FILE), points=SITE_POINTS, source="site")
    except (yaml.YAMLError, JobValidationError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
