"""shoal.sandbox: the plan, the environment, and the launcher confining a real
process with the kernel's Landlock (skipped only where the kernel lacks it)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from shoal.errors import ConfigError
from shoal.sandbox import (
    Confinement,
    confinement_mode,
    expand,
    job_env,
    job_user,
    landlock,
    secret_paths,
)
from shoal.sandbox import _reachable_by_others as reachable

needs_landlock = pytest.mark.skipif(landlock.abi() < 1, reason="no Landlock in this kernel")


def _tree(root: Path) -> dict[str, Path]:
    paths = {
        "kit_key": root / "kit" / "startup" / "client.key",
        "other_job": root / "kit" / "jobs" / "j2" / "model.bin",
        "data": root / "data" / "train.npz",
        "elsewhere": root / "elsewhere" / "notes.txt",
    }
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(p.name)
    (root / "kit" / "jobs" / "j1" / "job").mkdir(parents=True)
    return paths


def test_expand_cuts_out_a_denied_subtree_and_links_into_it(tmp_path: Path) -> None:
    paths = _tree(tmp_path)
    (tmp_path / "link-to-kit").symlink_to(tmp_path / "kit")
    whole, listable = expand(tmp_path, [tmp_path / "kit"])
    assert tmp_path / "data" in whole and tmp_path / "elsewhere" in whole
    assert not any(p == tmp_path / "kit" or tmp_path / "kit" in p.parents for p in whole)
    assert tmp_path / "link-to-kit" not in whole
    assert listable == [tmp_path]
    assert expand(paths["data"].parent, [tmp_path / "kit"]) == ([paths["data"].parent], [])
    assert expand(tmp_path / "kit", [tmp_path / "kit"]) == ([], [])


def test_job_env_keeps_a_documented_few(tmp_path: Path) -> None:
    daemon = {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "2",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t",
        "SHOAL_SERVER_ADDRESS": "x:1",
        "LD_PRELOAD": "/evil.so",
        "MY_VAR": "1",
        "SHOAL_JOB_ENV": "MY_VAR, OTHER",
    }
    env = job_env(daemon, home=tmp_path / "h", tmp=tmp_path / "t", extra={"APP": "1"})
    assert env == {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "2",
        "MY_VAR": "1",
        "HOME": str(tmp_path / "h"),
        "TMPDIR": str(tmp_path / "t"),
        "APP": "1",
    }


def test_confinement_mode() -> None:
    assert confinement_mode({}) == "required"
    assert confinement_mode({"SHOAL_CONFINEMENT": "off"}) == "off"
    with pytest.raises(ConfigError, match="SHOAL_CONFINEMENT='maybe'"):
        confinement_mode({"SHOAL_CONFINEMENT": "maybe"})


def test_secret_paths_cover_a_kit_in_its_provisioning_folder(tmp_path: Path) -> None:
    project = tmp_path / "ws" / "proj"
    kit = project / "prod_00" / "site-1"
    kit.mkdir(parents=True)
    (project / "state").mkdir()
    assert secret_paths(kit, kit) == [kit, kit, project]
    assert secret_paths(kit, tmp_path / "w", environ={"SHOAL_KIT_SOURCE": "/etc/shoal/kit"}) == [
        kit,
        tmp_path / "w",
        project,
        Path("/etc/shoal/kit"),
    ]


def test_a_uid_per_job_only_when_others_can_run_python(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "python").write_text("")
    os.chmod(private / "python", 0o755)
    assert not reachable(private / "python")
    # pytest's own folders are private (0700): a system file shows the other case.
    assert reachable(Path("/bin/sh"))
    user, why = job_user(in_use=())
    if os.geteuid() != 0:
        assert user is None and "not run as root" in why
    elif user is None:
        assert "cannot be read by other users" in why
    else:
        assert job_user(in_use=[user.uid])[0] != user


def _run(plan: Confinement, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        plan.command([sys.executable, "-c", code]),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_landlock
def test_launcher_confines_a_real_process(tmp_path: Path) -> None:
    paths = _tree(tmp_path)
    job = tmp_path / "kit" / "jobs" / "j1" / "job"
    plan = Confinement.for_job(
        [job],
        deny=[tmp_path / "kit"],
        environ={"SHOAL_DATA_PATHS": str(tmp_path / "data")},
    )
    code = (
        "from pathlib import Path\n"
        "def tryread(p):\n"
        "    try: Path(p).read_text(); return 'read'\n"
        "    except OSError as e: return type(e).__name__\n"
        f"print(tryread({str(paths['kit_key'])!r}), tryread({str(paths['other_job'])!r}),"
        f" tryread({str(paths['data'])!r}), tryread({str(paths['elsewhere'])!r}))\n"
        "Path('out.txt').write_text('ok')\n"
        "try:\n"
        f"    Path({str(tmp_path / 'data' / 'x')!r}).write_text('no')\n"
        "    print('wrote data')\n"
        "except OSError as e: print(type(e).__name__)\n"
    )
    done = _run(plan, code, job)
    assert done.returncode == 0, done.stderr
    assert "job code confined: Landlock ABI" in done.stderr
    reads, writes = done.stdout.splitlines()
    assert reads.split() == ["PermissionError", "PermissionError", "read", "PermissionError"]
    assert writes == "PermissionError"
    assert (job / "out.txt").read_text() == "ok"


@needs_landlock
def test_confinement_off_is_the_operators_explicit_choice(tmp_path: Path) -> None:
    paths = _tree(tmp_path)
    job = tmp_path / "kit" / "jobs" / "j1" / "job"
    plan = Confinement.for_job([job], deny=[tmp_path / "kit"], environ={"SHOAL_CONFINEMENT": "off"})
    done = _run(plan, f"print(open({str(paths['kit_key'])!r}).read())", job)
    assert done.returncode == 0 and done.stdout.strip() == "client.key"
    assert "unconfined" in done.stderr


def test_ruleset_needs_landlock() -> None:
    with pytest.raises(landlock.LandlockError, match="not available"):
        landlock.Ruleset(0)


def test_caps_are_rlimits_job_code_cannot_raise(tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    plan = Confinement.for_job([job], deny=[], environ={"SHOAL_CONFINEMENT": "off"})
    plan = replace(plan, memory_mb=300, cpu_seconds=30, processes=4096)
    assert Confinement.from_json(plan.to_json()) == plan
    code = (
        "import resource\n"
        "print(resource.getrlimit(resource.RLIMIT_DATA), resource.getrlimit(resource.RLIMIT_CPU),"
        " resource.getrlimit(resource.RLIMIT_NPROC))\n"
        "try:\n"
        "    resource.setrlimit(resource.RLIMIT_DATA, (2**40, 2**40)); print('raised')\n"
        "except (ValueError, OSError): print('kept')\n"
        "try:\n"
        "    hog = bytearray(400 * 2**20); print('allocated')\n"
        "except MemoryError: print('MemoryError')\n"
    )
    done = _run(plan, code, job)
    assert done.returncode == 0, done.stderr
    limits, raised, allocated = done.stdout.splitlines()
    mib = 300 * 2**20
    assert limits == f"({mib}, {mib}) (30, 35) (4096, 4096)"
    assert raised == "kept" and allocated == "MemoryError"
    assert "caps: memory 300 MiB, CPU 30 s, processes 4096" in done.stderr
