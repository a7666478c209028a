"""Print shoal's runtime requirements (plus the named extras) from pyproject.toml.

The image installs these in their own layer before shoal itself, so editing
shoal's source does not re-download TensorFlow. Used by deploy/Dockerfile:

    python requirements_from_pyproject.py pyproject.toml tf > requirements.txt
"""

from __future__ import annotations

import sys

import tomllib


def main(pyproject: str, extras: str = "") -> None:
    with open(pyproject, "rb") as fh:
        project = tomllib.load(fh)["project"]
    requirements = list(project["dependencies"])
    optional = project.get("optional-dependencies", {})
    for extra in filter(None, (e.strip() for e in extras.split(","))):
        if extra not in optional:
            sys.exit(f"unknown extra {extra!r}; pyproject.toml has {sorted(optional)}")
        requirements += optional[extra]
    print("\n".join(requirements))


if __name__ == "__main__":
    main(*sys.argv[1:])
