"""Thread counts for job workers sharing a machine (pure logic)."""

from __future__ import annotations

from pathlib import Path

from shoal._threads import THREAD_VARIABLES, available_cores, thread_env


def test_cores_are_shared_out_and_set_values_kept() -> None:
    env = thread_env({}, workers=3, cores=8)
    assert {env[name] for name in THREAD_VARIABLES} == {"2"}
    assert env["TF_NUM_INTEROP_THREADS"] == "2"
    assert thread_env({}, workers=4, cores=2)["OMP_NUM_THREADS"] == "1"
    kept = thread_env({"OMP_NUM_THREADS": "6", "TF_NUM_INTEROP_THREADS": "1"}, workers=1, cores=8)
    assert "OMP_NUM_THREADS" not in kept and "TF_NUM_INTEROP_THREADS" not in kept
    assert kept["MKL_NUM_THREADS"] == "8"


def test_a_cgroup_quota_lowers_the_cores(tmp_path: Path) -> None:
    assert available_cores(tmp_path) >= 1  # no cpu.max: the affinity
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert available_cores(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cores(tmp_path) == available_cores(tmp_path / "none")
