"""What `make image-test` needs before it can build: a Docker engine, a base
image and the host's Python package indexes, none of them from a registry.

* ``engine()``: the running Docker daemon, else ``dockerd`` started here with
  no bridge and no iptables rules (every build and container uses the host's
  network, so all traffic stays on this machine's addresses), stopped after.
  Where it cannot start (not root, no cgroups or overlay mounts) it raises
  :class:`Skip` with the reason.
* ``base_image()``: a minimal Debian of the host's own release, made by
  ``debootstrap`` from the host's apt mirror and loaded with ``docker import``:
  ``python3`` (>= 3.11 on bookworm), its ``venv`` and ``pip``, and the host's
  CA bundle, so that pip inside a build trusts what the host trusts (a
  TLS-inspecting proxy's CA included). Cached as ``shoal-imagetest-base:<release>``
  with the recipe's hash in a label: a second run skips debootstrap.
* ``host_pip_index()``: the host's pip indexes and find-links as build
  arguments; local folders (``file://`` indexes, find-links folders) are served
  over HTTP on 127.0.0.1 while the build runs, since a build cannot read them.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

#: Exit status meaning "skipped" (automake's convention): no engine can run here.
SKIP = 77

BASE_REPO = "shoal-imagetest-base"
#: What the Dockerfile's stages need from the base: python3 and venv (runtime),
#: pip with setuptools and wheel (the wheel build), CA certificates (pip over TLS).
PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
#: Bump when the recipe below changes, so cached bases are rebuilt.
RECIPE = 1
RECIPE_LABEL = "org.shoal.image-test.recipe"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
HOST_EXTRA_CAS = Path("/usr/local/share/ca-certificates")

Say = Callable[[str], None]


class Skip(Exception):
    """No Docker engine can run on this machine, or a tool to build the base
    is missing; the message says which."""


def docker(*args: str, check: bool = True, timeout: float | None = 120) -> str:
    """``docker ARGS``'s standard output; a failure names the command and its stderr."""
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: exit {result.returncode}\n{result.stderr}")
    return result.stdout


def _daemon_answers() -> bool:
    try:
        subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            timeout=20,
            check=True,
        )
    except (subprocess.SubprocessError, OSError):
        return False
    return True


def run_logged(cmd: list[str], log: Path, timeout: float, **kwargs: Any) -> None:
    """Run ``cmd`` with its output in ``log``; a failure quotes the log's end."""
    with log.open("w") as out:
        result = subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False, **kwargs
        )
    if result.returncode != 0:
        raise RuntimeError(f"{cmd[0]} {cmd[1]} failed ({result.returncode}):\n{_tail(log, 30)}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.contextmanager
def engine(log_dir: Path, say: Say) -> Iterator[None]:
    """A Docker daemon for the block: the running one, else one started here."""
    if shutil.which("docker") is None:
        raise Skip("no docker client on PATH (Debian: apt-get install docker.io)")
    if _daemon_answers():
        say("docker: using the daemon already running")
        yield
        return
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    if not os.access(dockerd, os.X_OK):
        raise Skip("no dockerd (Debian: apt-get install docker.io)")
    if os.geteuid() != 0:
        raise Skip(f"dockerd needs root, and this runs as uid {os.geteuid()}")
    log = log_dir / "dockerd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [dockerd, "--iptables=false", "--ip6tables=false", "--bridge=none"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while not _daemon_answers():
            if proc.poll() is not None:
                raise Skip(f"dockerd exited with {proc.returncode}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise Skip(f"dockerd did not answer within 60 s:\n{_tail(log)}")
            time.sleep(0.5)
        say(f"docker: started dockerd (pid {proc.pid}, log {log}); it is stopped at the end")
        yield
    finally:
        # SIGTERM lets dockerd stop its containerd too; SIGKILL after 30 s.
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        proc.kill()
        proc.wait()


# -- the base image -------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    """The host's distribution release and the apt mirror it installs from."""

    codename: str
    mirror: str


def host_release() -> Release:
    fields = dict(
        line.split("=", 1)
        for line in Path("/etc/os-release").read_text().splitlines()
        if "=" in line
    )
    codename = fields.get("VERSION_CODENAME", "").strip('"')
    distro = fields.get("ID", "").strip('"')
    if not codename or distro not in ("debian", "ubuntu"):
        raise Skip(
            f"the host is {distro or 'unknown'} {codename}: debootstrap needs Debian or Ubuntu"
        )
    default = (
        "http://deb.debian.org/debian" if distro == "debian" else "http://archive.ubuntu.com/ubuntu"
    )
    return Release(codename, _apt_mirror(codename) or default)


def _apt_mirror(codename: str) -> str | None:
    """The URI the host's apt sources use for the release itself (not -security)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and codename in suites.group(1).split():
                return uris.group(1).rstrip("/")
    sources = Path("/etc/apt/sources.list")
    if sources.is_file():
        for line in sources.read_text().splitlines():
            m = re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line.strip())
            if m and m.group(2) == codename:
                return m.group(1).rstrip("/")
    return None


def _recipe_key(release: Release) -> str:
    trust = HOST_CA_BUNDLE.read_bytes() if HOST_CA_BUNDLE.is_file() else b""
    recipe = {
        "recipe": RECIPE,
        "release": release.codename,
        "mirror": release.mirror,
        "packages": PACKAGES,
        "ca": hashlib.sha256(trust).hexdigest(),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def base_image(work: Path, say: Say) -> str:
    """The base image's tag, made by debootstrap unless an identical one is cached."""
    release = host_release()
    tag = f"{BASE_REPO}:{release.codename}"
    key = _recipe_key(release)
    labels = docker("image", "inspect", "--format", "{{json .Config.Labels}}", tag, check=False)
    if labels.strip() and (json.loads(labels) or {}).get(RECIPE_LABEL) == key:
        say(f"base: {tag} cached (recipe {key})")
        return tag
    if shutil.which("debootstrap") is None:
        raise Skip("debootstrap is not installed (Debian: apt-get install debootstrap)")
    root = work / "rootfs"
    log = work / "debootstrap.log"
    say(f"base: debootstrap {release.codename} from {release.mirror} (log {log})")
    try:
        cmd = ["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES)]
        run_logged([*cmd, release.codename, str(root), release.mirror], log, timeout=1200)
        _trust_what_the_host_trusts(root)
        _trim(root)
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "-C", str(root), "-c", "."], stdout=subprocess.PIPE
        )
        imported = subprocess.run(
            [
                "docker",
                "import",
                "--change",
                f"LABEL {RECIPE_LABEL}={key}",
                "--change",
                'CMD ["/bin/bash"]',
                "-",
                tag,
            ],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise RuntimeError(f"docker import {tag} failed: {imported.stderr}")
    finally:
        _remove_rootfs(root)
    say(f"base: imported {tag} (recipe {key})")
    return tag


def _trust_what_the_host_trusts(root: Path) -> None:
    """The host's CA bundle and extra CAs, and pip told to use the bundle."""
    if HOST_CA_BUNDLE.is_file():
        shutil.copyfile(HOST_CA_BUNDLE, root / HOST_CA_BUNDLE.relative_to("/"))
    if HOST_EXTRA_CAS.is_dir():
        # Kept by a later update-ca-certificates inside the image.
        dest = root / HOST_EXTRA_CAS.relative_to("/")
        dest.mkdir(parents=True, exist_ok=True)
        for cert in HOST_EXTRA_CAS.glob("*.crt"):
            shutil.copyfile(cert, dest / cert.name)
    (root / "etc" / "pip.conf").write_text(f"[global]\ncert = {HOST_CA_BUNDLE}\n")


def _trim(root: Path) -> None:
    for folder in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (root / folder).glob("*"):
            if entry.is_file():
                entry.unlink()


def _remove_rootfs(root: Path) -> None:
    """Unmount what a failed debootstrap left mounted inside, then delete."""
    if not root.exists():
        return
    inside = [
        line.split()[1]
        for line in Path("/proc/mounts").read_text().splitlines()
        if line.split()[1].startswith(str(root) + "/")
    ]
    for mount in sorted(inside, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False)
    shutil.rmtree(root, ignore_errors=True)


# -- the host's package indexes ---------------------------------------------------


def _pip_settings() -> dict[str, list[str]]:
    """index-url, extra-index-url and find-links as the host's pip sees them
    (its config files and PIP_* variables; the environment wins)."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    rank = {":env:": 3, "install": 2, "global": 1}
    best: dict[str, tuple[int, list[str]]] = {}
    for line in listed.splitlines():
        m = re.match(r"^([^.]+)\.([\w-]+)='(.*)'$", line.strip())
        if not m or m.group(2) not in ("index-url", "extra-index-url", "find-links"):
            continue
        level = rank.get(m.group(1), 0)
        if level >= best.get(m.group(2), (0, []))[0]:
            best[m.group(2)] = (level, m.group(3).split())
    return {key: values for key, (_, values) in best.items()}


def _local_folder(value: str) -> Path | None:
    if value.startswith("file://"):
        path = Path(unquote(urlparse(value).path))
    elif "://" not in value:
        path = Path(value)
    else:
        return None
    return path if path.is_dir() else None


@contextlib.contextmanager
def host_pip_index(say: Say) -> Iterator[dict[str, str]]:
    """Build arguments (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS,
    PIP_TRUSTED_HOST) that give a build the host's indexes, for the block."""
    settings = _pip_settings()
    # An index's pages link to its files relatively (``../../files/x.whl``), so
    # the folder above an index is served; a find-links folder is served itself.
    folders: list[Path] = []
    where: dict[str, tuple[int, str]] = {}
    for key, values in settings.items():
        for value in values:
            folder = _local_folder(value)
            if folder is None:
                continue
            served, rest = (
                (folder, "") if key == "find-links" else (folder.parent, folder.name + "/")
            )
            if served not in folders:
                folders.append(served)
            where[value] = (folders.index(served), rest)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def translate_path(self, path: str) -> str:
            head, _, rest = urlparse(path).path.lstrip("/").partition("/")
            if not head.isdigit() or int(head) >= len(folders):
                return "/nonexistent"
            top = folders[int(head)].resolve()
            target = (top / unquote(rest)).resolve()
            return str(target) if target.is_relative_to(top) else "/nonexistent"

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    if folders:
        thread.start()
    port = server.server_address[1]

    def translate(value: str) -> str:
        if value not in where:
            return value
        index, rest = where[value]
        return f"http://127.0.0.1:{port}/{index}/{rest}"

    args = {
        name: " ".join(translate(v) for v in settings[key])
        for name, key in (
            ("PIP_INDEX_URL", "index-url"),
            ("PIP_EXTRA_INDEX_URL", "extra-index-url"),
            ("PIP_FIND_LINKS", "find-links"),
        )
        if settings.get(key)
    }
    if folders:
        args["PIP_TRUSTED_HOST"] = "127.0.0.1"
        say(f"pip: serving {', '.join(map(str, folders))} on 127.0.0.1:{port} for the build")
    try:
        yield args
    finally:
        if folders:
            server.shutdown()
        server.server_close()
