"""The simulator end to end with numpy-only jobs."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from shoal.arrays import load_arrays
from shoal.cli.app import main
from shoal.errors import ConfigError, JobFailedError
from shoal.sim import RoundStats, SimulatorConfig, simulate
from shoal.testing import run_simulation

from .conftest import HELLO_NUMPY

ECHO = """\
import sys
import numpy as np
import shoal.client as fl

fl.init()
info = fl.system_info()
print("hello from", info["site_name"], "argv", sys.argv[1:])
while fl.is_running():
    m = fl.receive()
    w = m.params["w"]
    w += info["site_index"] + 1       # arrays received are writable
    fl.send(fl.FLModel(params={"w": w}, metrics={"idx": info["site_index"]}, num_examples=1))
"""


def test_hello_numpy_three_sites(tmp_path: Path) -> None:
    seen: list[RoundStats] = []
    result = simulate(
        SimulatorConfig(job_dir=HELLO_NUMPY, num_sites=3, workdir=tmp_path), on_round=seen.append
    )
    assert result.ok, result.failure_summary()
    assert result.sites == ("site-1", "site-2", "site-3")
    assert [r.round for r in result.rounds] == [1, 2, 3, 4, 5]
    assert all(r.answered == r.asked == 3 for r in result.rounds)
    assert seen == list(result.rounds)
    assert seen[-1].total_rounds == 5 and "loss" in seen[-1].global_metrics
    assert result.final_metrics["weight_error"] < 0.05
    run = tmp_path / "hello-numpy"
    assert result.run_dir == run
    assert (run / "models" / "global_final.safetensors").is_file()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 5
    assert any((run / "tensorboard").iterdir())
    logs = sorted(p.name for p in (run / "logs").iterdir())
    assert logs == ["server.log", "site-1.log", "site-2.log", "site-3.log", "sites.log"]
    assert "round 5/5 done" in (run / "logs" / "server.log").read_text()
    assert not (run / ".sim").exists()


def test_hello_numpy_two_hundred_sites(tmp_path: Path) -> None:
    result = run_simulation(HELLO_NUMPY, 200, tmp_path)
    assert len(result.sites) == 200 and result.sites[-1] == "site-200"
    assert all(r.answered == 200 for r in result.rounds)
    assert result.final_metrics["weight_error"] < 0.01
    # No per-site files beyond 32 sites: one shared log.
    assert sorted(p.name for p in result.log_dir.iterdir()) == ["server.log", "sites.log"]


def test_fedavg_of_site_results_and_site_identity(
    tmp_path: Path, make_job: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    job = make_job(ECHO, rounds=2, args='["--flag", "x"]')
    result = run_simulation(job, 4, tmp_path / "out")
    # Every site adds index+1 to every weight; equal weights, so the mean adds 2.5 a round.
    final = load_arrays(result.models_dir / "global_final.safetensors")["w"]
    np.testing.assert_allclose(final, np.full(3, 5.0))
    assert result.rounds[0].metrics["idx"] == pytest.approx(1.5)
    # A site's prints go to its logs, not to the console.
    assert "hello from" not in capsys.readouterr().out
    site3 = (result.log_dir / "site-3.log").read_text()
    assert "hello from site-3 argv ['--flag', 'x']" in site3
    assert "site-2: hello from site-2" in (result.log_dir / "sites.log").read_text()


def test_processes_mode(tmp_path: Path, make_job: Callable[..., Path]) -> None:
    job = make_job(ECHO, rounds=2)
    result = run_simulation(job, 5, tmp_path, mode="processes", processes=2)
    final = load_arrays(result.models_dir / "global_final.safetensors")["w"]
    np.testing.assert_allclose(final, np.full(3, 6.0))
    assert "hello from site-5" in (result.log_dir / "site-5.log").read_text()


def test_a_failing_site_fails_the_simulation(tmp_path: Path, make_job: Callable[..., Path]) -> None:
    job = make_job(
        """\
        import shoal.client as fl
        fl.init()
        while fl.is_running():
            m = fl.receive()
            if fl.system_info()["site_index"] == 1:
                raise ZeroDivisionError("site two is broken")
            fl.send(fl.FLModel(params=m.params, num_examples=1))
        """,
        rounds=2,
    )
    result = run_simulation(job, 3, tmp_path, check=False)
    assert not result.ok
    assert list(result.site_errors) == ["site-2"]
    assert "ZeroDivisionError: site two is broken" in result.site_errors["site-2"]
    assert "site-2" in result.failure_summary()
    # The other sites went on: min_clients=1 is still met.
    assert [r.answered for r in result.rounds] == [2, 2]
    assert "ZeroDivisionError" in (result.log_dir / "site-2.log").read_text()
    with pytest.raises(JobFailedError, match="site two is broken"):
        run_simulation(job, 3, tmp_path)


def test_job_failure_when_too_few_sites_answer(
    tmp_path: Path, make_job: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    job = make_job("import sys\nsys.exit(3)\n", min_clients=2)
    code = main(["simulate", str(job), "-n", "2", "-w", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    assert "2 site(s) failed" in err and "exited with status 3" in err


def test_a_site_that_leaves_early_is_not_an_error(
    tmp_path: Path, make_job: Callable[..., Path]
) -> None:
    job = make_job(
        """\
        import shoal.client as fl
        fl.init()
        m = fl.receive()
        fl.send(fl.FLModel(params=m.params, num_examples=1))
        if fl.system_info()["site_index"] == 0:
            raise SystemExit(0)
        while fl.is_running():
            m = fl.receive()
            fl.send(fl.FLModel(params=m.params, num_examples=1))
        """,
        rounds=3,
    )
    result = run_simulation(job, 2, tmp_path)
    assert result.sites_left_early == ("site-1",)
    assert [r.answered for r in result.rounds] == [2, 1, 1]


def test_too_few_sites_for_min_clients(tmp_path: Path, make_job: Callable[..., Path]) -> None:
    job = make_job(ECHO, min_clients=3)
    with pytest.raises(ConfigError, match="needs at least 3 sites"):
        simulate(SimulatorConfig(job_dir=job, num_sites=2, workdir=tmp_path))
    assert main(["simulate", str(job), "-n", "2", "-w", str(tmp_path)]) == 2


def test_default_site_count_is_min_clients(tmp_path: Path, make_job: Callable[..., Path]) -> None:
    job = make_job(ECHO, min_clients=2)
    assert run_simulation(job, None, tmp_path).sites == ("site-1", "site-2")


def test_a_rerun_replaces_its_folder_but_not_foreign_ones(
    tmp_path: Path, make_job: Callable[..., Path]
) -> None:
    job = make_job(ECHO)
    first = run_simulation(job, 2, tmp_path)
    (first.run_dir / "stale.txt").write_text("x")
    second = run_simulation(job, 2, tmp_path)
    assert not (second.run_dir / "stale.txt").exists()
    foreign = tmp_path / "other"
    (foreign / "tiny").mkdir(parents=True)
    (foreign / "tiny" / "precious.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not written by `shoal simulate`"):
        simulate(SimulatorConfig(job_dir=job, num_sites=2, workdir=foreign))
    assert (foreign / "tiny" / "precious.txt").read_text() == "keep"


def test_cli_prints_progress_and_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", str(HELLO_NUMPY), "-n", "3", "-w", str(tmp_path), "-t", "2"]) == 0
    out = capsys.readouterr().out
    assert "round 1/5: 3/3 sites" in out
    assert "final global metrics: loss=" in out
    assert str(tmp_path / "hello-numpy") in out
    record = json.loads((tmp_path / "hello-numpy" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["round"] == 5


def test_cli_on_a_terminal_draws_one_updating_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    assert main(["simulate", str(HELLO_NUMPY), "-n", "2", "-w", str(tmp_path), "-t", "2"]) == 0
    text = screen.getvalue()
    updates = text.split("\r\x1b[2K")[1:]
    assert [u.split()[1] for u in updates] == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    assert updates[-1].startswith("round 5/5 [########################] 100% global loss=")
    assert "2/2 sites" in updates[-1]
    # The bar's line ends before the summary starts.
    assert "\nfinished: hello-numpy, 2 site(s), 5 round(s)" in text


def test_process_state_is_restored(tmp_path: Path, make_job: Callable[..., Path]) -> None:
    import os
    import sys

    argv, path = list(sys.argv), list(sys.path)
    job = make_job(ECHO)
    run_simulation(job, 2, tmp_path)
    assert sys.argv == argv and sys.path == path
    assert "weights" not in sys.modules and "SHOAL_WORKER_CONFIG" not in os.environ
