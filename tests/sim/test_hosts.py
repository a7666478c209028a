"""The site-host seam: the simulator runs its sites on whatever SITE_HOSTS names."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shoal.arrays import load_arrays
from shoal.errors import ConfigError
from shoal.sim import SimulatorConfig, simulate
from shoal.sim.hosts import (
    SITE_HOSTS,
    HostSetup,
    ProcessesHost,
    ThreadsHost,
    site_host_factory,
)
from shoal.sim.site import SiteRuntime

from .test_simulate import ECHO


class PerSiteFilesHost:
    """A test-only host unlike both shipped ones: one SiteRuntime per site, and
    weights handed back as files (as a host in another process would), with a
    record of every call the runner made."""

    def __init__(self, setup: HostSetup) -> None:
        self.calls: list[tuple[str, Any]] = []
        self._runtimes = {
            site.name: SiteRuntime(
                script=setup.script,
                sites=[site],
                num_sites=len(setup.sites),
                job_id=setup.job_id,
                results_dir=setup.results_dir,
                emit=setup.emit,
                max_active=1,
            )
            for site in setup.sites
        }
        made.append(self)

    def start(self) -> None:
        self.calls.append(("start", None))
        for runtime in self._runtimes.values():
            runtime.start()

    def deliver(self, site: str, message: dict[str, Any] | None) -> None:
        self.calls.append(("deliver", (site, None if message is None else message["round"])))
        self._runtimes[site].deliver(site, message)

    def stop(self, timeout: float) -> list[str]:
        self.calls.append(("stop", None))
        return [s for r in self._runtimes.values() for s in r.join(timeout)]


made: list[PerSiteFilesHost] = []


def test_the_shipped_hosts_are_in_the_table() -> None:
    assert site_host_factory("threads") is ThreadsHost
    assert site_host_factory("processes") is ProcessesHost


def test_an_unknown_mode_names_the_known_ones(
    tmp_path: Path, make_job: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match=r"mode must be 'threads' or 'processes', got 'ray'"):
        site_host_factory("ray")
    monkeypatch.setitem(SITE_HOSTS, "inline", PerSiteFilesHost)
    with pytest.raises(ConfigError, match=r"'threads', 'processes' or 'inline', got 'ray'"):
        simulate(SimulatorConfig(job_dir=make_job(ECHO), workdir=tmp_path, mode="ray"))
    # Refused before the run folder is made.
    assert not (tmp_path / "tiny").exists()


def test_the_table_decides_which_host_runs_the_sites(
    tmp_path: Path, make_job: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen: list[HostSetup] = []

    def refuse(setup: HostSetup) -> ThreadsHost:
        chosen.append(setup)
        raise RuntimeError("this host refuses to start")

    monkeypatch.setitem(SITE_HOSTS, "threads", refuse)
    result = simulate(SimulatorConfig(job_dir=make_job(ECHO), num_sites=2, workdir=tmp_path))
    assert [s.name for s in chosen[0].sites] == ["site-1", "site-2"]
    assert chosen[0].argv == (str(tmp_path / "tiny" / "app" / "train.py"),)
    assert not result.ok and result.error is not None
    assert "this host refuses to start" in result.error


def test_a_third_host_registered_in_the_table_runs_a_job(
    tmp_path: Path, make_job: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    made.clear()
    monkeypatch.setitem(SITE_HOSTS, "per-site-files", PerSiteFilesHost)
    job = make_job(ECHO, rounds=2)
    result = simulate(
        SimulatorConfig(job_dir=job, num_sites=3, workdir=tmp_path, mode="per-site-files")
    )
    assert result.ok, result.failure_summary()
    assert [r.answered for r in result.rounds] == [3, 3]
    # Sites add 1, 2, 3 to every weight: the mean adds 2 a round.
    final = load_arrays(result.models_dir / "global_final.safetensors")["w"]
    np.testing.assert_allclose(final, np.full(3, 4.0))
    assert "hello from site-2" in (result.log_dir / "site-2.log").read_text()
    (host,) = made
    assert host.calls[0] == ("start", None) and host.calls[-1] == ("stop", None)
    delivered = [arg for kind, arg in host.calls if kind == "deliver"]
    for site in ("site-1", "site-2", "site-3"):
        assert [r for s, r in delivered if s == site] == [1, 2, None]


def test_a_script_that_does_not_compile_is_reported(
    tmp_path: Path, make_job: Callable[..., Path]
) -> None:
    # The host fails as it is built: the run ends with the error, not a crash.
    result = simulate(SimulatorConfig(job_dir=make_job("def (:\n"), num_sites=2, workdir=tmp_path))
    assert not result.ok and result.error is not None
    assert "SyntaxError" in result.error
