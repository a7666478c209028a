"""`helm lint` and `helm template` for the tests: the helm binary when one is
installed, else Helm's own Go library through helm-python-sdk (the [dev]
extra), which renders with the same engine (Helm 4's SDK).

The binary is $SHOAL_HELM, else a helm beside the venv's Python (where
`GOBIN=.venv/bin go install helm.sh/helm/...` puts it), else one on PATH.
CI has none (docs/deploy-kubernetes.md, section 6, says what was tried), so
it uses the library.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

_BESIDE_PYTHON = Path(sys.executable).parent / "helm"
HELM = (
    os.environ.get("SHOAL_HELM")
    or (str(_BESIDE_PYTHON) if os.access(_BESIDE_PYTHON, os.X_OK) else None)
    or shutil.which("helm")
)


def why_unavailable() -> str | None:
    if HELM:
        return None
    try:
        import helm_python  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"no helm binary and no helm-python-sdk ({exc})"
    return None


def lint(chart: Path, values: dict[str, Any]) -> list[str]:
    """Problems `helm lint --strict` reports (warnings count), as text."""
    if HELM:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(values, f)
        try:
            result = subprocess.run(
                [HELM, "lint", "--strict", str(chart), "-f", f.name],
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            os.unlink(f.name)
        return [] if result.returncode == 0 else [result.stdout + result.stderr]
    import helm_python as helm

    report = helm.lint(str(chart), values, strict=True)
    # Severity 1 is INFO (e.g. "icon is recommended"); warnings and errors fail.
    problems = [
        f"{m.get('path')}: {m.get('error')}"
        for m in report.get("messages", [])
        if int(m.get("severity", 0)) >= 2
    ]
    return problems + [str(e) for e in report.get("errors") or []]


def template(
    chart: Path, values: dict[str, Any], *, name: str, namespace: str
) -> list[dict[str, Any]]:
    """The objects `helm template` renders (NOTES.txt left out, as helm does)."""
    if HELM:
        result = subprocess.run(
            [HELM, "template", name, str(chart), "-n", namespace, "-f", "-"],
            input=json.dumps(values),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        texts = [result.stdout]
    else:
        import helm_python as helm

        with helm.Chart.load(str(chart)) as loaded:
            rendered = loaded.render(values, name=name, namespace=namespace, is_install=True)
        texts = [text for path, text in sorted(rendered.items()) if not path.endswith(".txt")]
    docs: list[dict[str, Any]] = []
    for text in texts:
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def render_error(chart: Path, values: dict[str, Any]) -> str:
    """The message a failing render gives (a template's ``fail``)."""
    try:
        template(chart, values, name="x", namespace="x")
    except Exception as exc:  # the CLI's CalledProcessError or the SDK's HelmRenderError
        return f"{exc} {getattr(exc, 'stderr', '')}"
    return ""
