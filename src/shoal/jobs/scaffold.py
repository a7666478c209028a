"""New job folders from templates: what ``shoal job new`` writes.

    folder = new_job("my-job", framework="pt", parent=Path("jobs"))   # jobs/my-job/

A template is a folder of package data, ``shoal/jobs/templates/<framework>/``,
plus ``templates/common/`` shared by all; ``__JOB_NAME__`` and
``__WORKFLOW__`` in its files are replaced, and ``__WORKFLOW_PARAMS__`` by
the workflow's parameters with commented defaults
(``templates/workflows/<workflow>.yml``; a workflow without one, such as a
plug-in, gets the round driver's). A line that ends in ``# [scaffold]`` is
kept only in a ``scaffold`` job, one in ``# [not scaffold]`` only in the
others (the marker goes): the scripts use SCAFFOLD's helper and FedProx's
term only where the workflow asks for them. The result runs as written in
``shoal simulate``: it is checked as a submit would check it before it
appears, and it appears whole or not at all. An existing folder is never
touched.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from shoal.errors import ConfigError
from shoal.jobs.spec import _NAME_RE

__all__ = ["FRAMEWORKS", "NewJob", "new_job"]

logger = logging.getLogger(__name__)

#: ``--framework`` values and what each template trains with.
FRAMEWORKS: dict[str, str] = {
    "numpy": "softmax regression in plain numpy",
    "pt": "a PyTorch MLP (torch)",
    "tf": "a Keras MLP (TensorFlow)",
}

_COMMON = "common"
_TOKENS = ("__JOB_NAME__", "__WORKFLOW__")
#: Folder of the workflows' ``workflow:`` parameters, and the round driver's.
_WORKFLOWS = "workflows"
_ROUNDS_PARAMS = "_rounds.yml"
#: Rounds (FedBuff: versions) a template's job runs: a first run takes seconds.
_NUM_ROUNDS = {"numpy": 5, "pt": 3, "tf": 3}
#: A line kept only in some workflows' jobs: ``... # [scaffold]``, ``... # [not scaffold]``.
_ONLY = re.compile(r"[ \t]+# \[(not )?([a-z0-9_]+(?:, ?[a-z0-9_]+)*)\][ \t]*$")


@dataclass(frozen=True)
class NewJob:
    """What :func:`new_job` wrote."""

    #: The new job folder.
    folder: Path
    #: Its files, relative to ``folder``, sorted.
    files: tuple[str, ...]


def _template_files(framework: str) -> dict[str, Traversable]:
    """Relative POSIX path -> template file; the framework's own files win."""
    base = resources.files("shoal.jobs") / "templates"
    out: dict[str, Traversable] = {}

    def walk(node: Traversable, prefix: str) -> None:
        for child in node.iterdir():
            if child.name == "__pycache__" or child.name.endswith((".pyc", ".pyo")):
                continue
            rel = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, rel + "/")
            else:
                out[rel] = child

    for part in (_COMMON, framework):
        walk(base / part, "")
    return out


def _workflow_params(framework: str, workflow: str) -> str:
    """The lines under ``workflow: name:`` for ``workflow``, defaults commented."""
    folder = resources.files("shoal.jobs") / "templates" / _WORKFLOWS
    source = folder / f"{workflow}.yml"
    if not source.is_file():
        source = folder / _ROUNDS_PARAMS
    rounds = _NUM_ROUNDS[framework]
    text = source.read_text(encoding="utf-8").rstrip("\n")
    # Padded so the comments after the value stay in their column.
    text = text.replace("__NUM_ROUNDS__ ", f"{rounds:<13} ")
    return text.replace("__NUM_VERSIONS__ ", f"{2 * rounds:<11} ")


def _for_workflow(text: str, workflow: str) -> str:
    """``text`` with the lines marked for other workflows left out (see the module doc)."""
    out = []
    for line in text.splitlines(keepends=True):
        m = _ONLY.search(line.rstrip("\n"))
        if m is None:
            out.append(line)
            continue
        names = {n.strip() for n in m.group(2).split(",")}
        if (workflow in names) != bool(m.group(1)):
            out.append(line[: m.start()] + line[len(line.rstrip("\n")) :])
    return "".join(out)


def new_job(
    name: str, *, framework: str, workflow: str = "fedavg", parent: Path = Path(".")
) -> NewJob:
    """Write the ``framework`` template as job ``name`` in ``parent/name``.

    ConfigError, with nothing written, for a name that is not a valid job
    name, an unknown framework or workflow, or a folder that already exists.
    """
    from shoal.jobs.check import check_job
    from shoal.workflows import registry

    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            f"{name!r} is not a valid job name ([A-Za-z0-9][A-Za-z0-9._-]{{0,63}}: "
            "a letter or digit, then letters, digits, '.', '_' or '-')"
        )
    if framework not in FRAMEWORKS:
        raise ConfigError(f"unknown framework {framework!r} (known: {', '.join(FRAMEWORKS)})")
    if workflow not in registry.workflow_names():
        raise ConfigError(
            f"unknown workflow {workflow!r} (known: {', '.join(registry.workflow_names())})"
        )
    parent = Path(parent)
    folder = parent / name
    if folder.exists() or folder.is_symlink():
        raise ConfigError(f"{folder}: already exists; nothing was written (choose another name)")
    if not parent.is_dir():
        raise ConfigError(f"{parent}: no such folder")

    files = _template_files(framework)
    params = _workflow_params(framework, workflow)
    # Written beside its destination and renamed into place once checked, so
    # a failure (or a crash) never leaves half a job under the real name.
    staging = parent / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.new"
    staging.mkdir()
    try:
        for rel, source in sorted(files.items()):
            text = source.read_text(encoding="utf-8")
            for token, value in zip(_TOKENS, (name, workflow), strict=True):
                text = text.replace(token, value)
            text = _for_workflow(text.replace("__WORKFLOW_PARAMS__", params), workflow)
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        report = check_job(staging)
        if not report.ok:
            # A template that does not pass its own check is a bug in shoal
            # (or a workflow whose parameters the template does not fit).
            raise ConfigError(
                f"the {framework} template does not make a valid {workflow} job: "
                + "; ".join(report.problems)
            )
        try:
            # Refused if the folder appeared meanwhile with something in it.
            os.rename(staging, folder)
        except OSError as exc:
            raise ConfigError(f"{folder}: cannot create it: {exc.strerror}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("new %s job %s from the %s template", workflow, folder, framework)
    return NewJob(folder=folder, files=tuple(sorted(files)))
