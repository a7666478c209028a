"""`make image-test`: build shoal's image here, with no registry, and run the
reference scenario in containers, a site lost mid-job included.

1. A Docker engine (scripts/image_base.py): the running one, or dockerd
   started here and stopped at the end; where none can start, it says why and
   exits 77 (skipped).
2. A base image from Debian packages (debootstrap of the host's release,
   ``docker import``), cached between runs.
3. The image from deploy/Dockerfile on that base: the classic builder
   (DOCKER_BUILDKIT=0), host networking, the host's pip indexes; the slim
   variant (numpy, no framework) unless --variant tf|pt. --build-only stops
   here, prints the image's size and cleans up (the sizes in the docs).
4. The scenario: ``shoal poc prepare`` kits (free ports), the server and
   sites site-1 and site-2 as containers (host networking, read-only root
   filesystem, every capability dropped, no-new-privileges, UID 10001),
   the admin on the host submitting a numpy job; ``docker kill`` of
   site-2 mid-job. docs/reliability.md says: the rounds go on without it while
   ``min_clients`` holds, it is listed as ``missing``, and once restarted it
   reconnects and answers a later round. The run checks each of those, and
   that the job ends FINISHED:COMPLETED with a model that learned (loss < 0.05).
5. Every container and image it made is removed (the cached base kept unless
   --drop-base), and the time of each step is printed.

    .venv/bin/python scripts/image_test.py [--variant slim|tf|pt] [--build-only]
        [--keep-work] [--drop-base]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import image_base as base  # noqa: E402

from shoal import jobstatus, poc  # noqa: E402
from shoal.admin.session import AdminSession  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "hello-numpy"
#: The image's user (deploy/Dockerfile).
UID = 10001
#: Enough rounds that a restarted site has some left to answer, each long
#: enough (~2 s of numpy per site) that the kill lands mid-round.
ROUNDS = 12
STEPS = 200_000
KILL_IN_ROUND = 3
#: The build arguments of deploy/Dockerfile's variants (docs/deploy-kubernetes.md).
VARIANTS = {
    "slim": {"TF_EXTRA": ""},
    "tf": {"TF_EXTRA": "tf"},
    "pt": {"TF_EXTRA": "", "TORCH": "cpu"},
}


def say(line: str) -> None:
    print(f"[image-test {time.strftime('%H:%M:%S')}] {line}", flush=True)


def wait_for(what: str, check: Callable[[], Any], timeout: float, poll: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def build_image(
    tag: str, base_tag: str, pip_args: Mapping[str, str], variant: Mapping[str, str], log: Path
) -> None:
    revision = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    build_args = {
        "BASE_IMAGE": base_tag,
        "BUILD_IMAGE": base_tag,
        **variant,
        "REVISION": revision,
        **pip_args,
    }
    # --force-rm: a failed step's container goes too.
    cmd = [
        "docker",
        "build",
        "--network",
        "host",
        "--force-rm",
        "-f",
        "deploy/Dockerfile",
        "-t",
        tag,
    ]
    for name, value in build_args.items():
        cmd += ["--build-arg", f"{name}={value}"]
    say(f"build: {tag} on {base_tag}, classic builder (log {log})")
    base.run_logged(
        [*cmd, "."], log, timeout=3600, cwd=ROOT, env={**os.environ, "DOCKER_BUILDKIT": "0"}
    )


def numpy_job(dest: Path) -> Path:
    """hello-numpy with more, slower rounds and min_clients 1."""
    shutil.copytree(EXAMPLE, dest)
    job = yaml.safe_load((dest / "job.yml").read_text())
    job["name"] = "image-test-numpy"
    job["min_clients"] = 1
    job["workflow"].update({"num_rounds": ROUNDS, "round_timeout_s": 120})
    job["client"]["args"] = ["--steps", str(STEPS), "--lr", "0.01"]
    (dest / "job.yml").write_text(yaml.safe_dump(job, sort_keys=False))
    return dest


def give_to_image_user(folder: Path) -> None:
    """The image runs as 10001; kits provisioned as root must become its."""
    for dirpath, _, filenames in os.walk(folder):
        os.chown(dirpath, UID, UID)
        for name in filenames:
            os.chown(os.path.join(dirpath, name), UID, UID)


class Participants:
    """The scenario's containers, all labelled with this run's id."""

    def __init__(self, image: str, run_id: str) -> None:
        self.image = image
        self.label = f"org.shoal.image-test={run_id}"
        self.names: dict[str, str] = {}

    def start(self, name: str, role: str, kit: Path, env: Mapping[str, str]) -> None:
        container = f"shoal-it-{self.label.rsplit('=', 1)[1]}-{name}"
        cmd = [
            "run", "-d", "--name", container, "--label", self.label,
            "--network", "host", "--user", f"{UID}:{UID}", "--read-only",
            "--tmpfs", "/tmp", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges:true",
            "-v", f"{kit}:/opt/shoal/kit",
            "-e", "SHOAL_KIT_DIR=/opt/shoal/kit", "-e", "HOME=/tmp",
        ]  # fmt: skip
        for key, value in env.items():
            cmd += ["-e", f"{key}={value}"]
        base.docker(*cmd, self.image, role)
        self.names[name] = container

    def health(self, name: str) -> str:
        return base.docker(
            "inspect", "--format", "{{.State.Health.Status}}", self.names[name]
        ).strip()

    def logs(self) -> None:
        for name, container in self.names.items():
            out = subprocess.run(
                ["docker", "logs", "--tail", "25", container],
                capture_output=True,
                text=True,
                check=False,
            )
            print(f"--- {name} ({container}), last lines:\n{out.stdout}{out.stderr}", flush=True)

    def remove(self) -> None:
        ids = base.docker("ps", "-aq", "--filter", f"label={self.label}", check=False).split()
        if ids:
            base.docker("rm", "-f", *ids, check=False)


def scenario(image: str, work: Path, run_id: str) -> dict[str, Any]:
    layout = poc.prepare(work / "poc", num_sites=2)
    for kit in (layout.server_kit, *layout.site_kits.values()):
        give_to_image_user(kit)
    job = numpy_job(work / "job")
    health = poc.free_ports(2)
    fed = Participants(image, run_id)
    try:
        fed.start("server1", "server", layout.server_kit, {})
        for name, port in zip(("site-1", "site-2"), health, strict=True):
            env = {"SHOAL_SERVER_ADDRESS": layout.fed_address, "SHOAL_HEALTH_PORT": str(port)}
            fed.start(name, "client", layout.site_kits[name], env)
        return _run_job(fed, layout, job)
    except BaseException:
        fed.logs()
        raise
    finally:
        fed.remove()


def _run_job(fed: Participants, layout: poc.PocLayout, job: Path) -> dict[str, Any]:
    admin = wait_for(
        "the server's admin port",
        lambda: _try_admin(layout),
        120,
        poll=1,
    )
    with admin:
        wait_for(
            "site-1 and site-2 to connect",
            lambda: {s.name for s in admin.check_status().connected} >= {"site-1", "site-2"},
            120,
        )
        job_id = admin.submit_job(job)
        say(f"scenario: submitted {job_id}; {ROUNDS} rounds, min_clients 1")

        def site2_training() -> int | None:
            """The round site-2 trains now, from round KILL_IN_ROUND on."""
            site = admin.show_stats(job_id).sites.get("site-2")
            if site and site.state == "task offered" and (site.round or 0) >= KILL_IN_ROUND:
                return site.round
            return None

        killed_in = wait_for(f"site-2 to train round {KILL_IN_ROUND}", site2_training, 300, 0.2)
        base.docker("kill", fed.names["site-2"])
        say(f"scenario: docker kill site-2 while it trained round {killed_in}")

        def round_without_site2() -> Any:
            # Killed mid-round, it is listed as missing in that round; killed
            # just after its upload, it is simply not asked in the next one.
            rows = admin.show_stats(job_id).metrics
            return next(
                (r for r in rows if r["round"] >= killed_in and "site-2" not in r["sites"]),
                None,
            )

        missed = wait_for("a round that goes on without site-2", round_without_site2, 180)
        how = "listed as missing" if "site-2" in missed["missing"] else "not asked"
        say(f"scenario: round {missed['round']} completed without site-2 ({how})")
        base.docker("start", fed.names["site-2"])
        wait_for(
            "site-2 to reconnect",
            lambda: "site-2" in {s.name for s in admin.check_status().connected},
            120,
        )
        back_in = admin.show_stats(job_id).current_round
        say(f"scenario: site-2 restarted and reconnected during round {back_in}")
        meta = admin.wait_for_job(job_id, timeout=600)
        rows = list(admin.show_stats(job_id).metrics)
    if meta.status != jobstatus.COMPLETED:
        raise RuntimeError(f"job {job_id} ended {meta.status}")
    return _check_rounds(rows, int(missed["round"]), fed)


def _try_admin(layout: poc.PocLayout) -> AdminSession | None:
    try:
        return AdminSession.from_kit(
            layout.admin_kit, server_address=layout.admin_address, timeout=5
        )
    except Exception:  # not listening yet
        return None


def _check_rounds(rows: list[Mapping[str, Any]], missed: int, fed: Participants) -> dict[str, Any]:
    rounds = {int(r["round"]): r for r in rows}
    if sorted(rounds) != list(range(1, ROUNDS + 1)):
        raise RuntimeError(f"rounds recorded: {sorted(rounds)}, expected 1..{ROUNDS}")
    if sorted(rounds[1]["sites"]) != ["site-1", "site-2"]:
        raise RuntimeError(f"round 1 had {sorted(rounds[1]['sites'])}")
    for k in range(1, ROUNDS + 1):
        if "site-1" not in rounds[k]["sites"]:
            raise RuntimeError(f"round {k}: site-1 missing, {rounds[k]}")
    rejoined = [k for k in range(missed + 1, ROUNDS + 1) if "site-2" in rounds[k]["sites"]]
    if not rejoined:
        raise RuntimeError(f"site-2 answered no round after {missed}: {rows}")
    # The data's noise (0.1) puts the best loss at ~0.01; the all-zero
    # initial model's is ~14 (model.TRUE_W, TRUE_B).
    first, last = rounds[1]["server"]["loss"], rounds[ROUNDS]["server"]["loss"]
    if not last < 0.05:
        raise RuntimeError(
            f"the global model did not learn: server loss {last} after {ROUNDS} rounds"
        )
    say(
        f"scenario: FINISHED:COMPLETED; site-2 missing in rounds "
        f"{[k for k, r in rounds.items() if 'site-2' in r['missing']]}, back from round "
        f"{rejoined[0]}; server loss {first:.4f} -> {last:.4f}"
    )
    statuses = {name: fed.health(name) for name in ("server1", "site-1")}
    if any(s != "healthy" for s in statuses.values()):
        raise RuntimeError(f"image HEALTHCHECK: {statuses}")
    say(f"scenario: image HEALTHCHECK {statuses}")
    return {"missed": missed, "rejoined": rejoined[0], "loss": (first, last)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variant", choices=sorted(VARIANTS), default="slim", help="the image to build"
    )
    parser.add_argument(
        "--build-only", action="store_true", help="build, print the size, clean up: no scenario"
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--drop-base", action="store_true", help="remove the cached base image at the end too"
    )
    args = parser.parse_args(argv)
    run_id = f"{os.getpid()}"
    image = f"shoal-imagetest:{run_id}"
    work = Path(tempfile.mkdtemp(prefix="shoal-imagetest-"))
    times: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        with base.engine(work, say):
            before = set(base.docker("images", "-aq", "--no-trunc").split())
            base_tag = ""
            try:
                t = time.monotonic()
                base_tag = base.base_image(work, say)
                times["base image"] = time.monotonic() - t
                t = time.monotonic()
                with base.host_pip_index(say) as pip_args:
                    build_image(
                        image, base_tag, pip_args, VARIANTS[args.variant], work / "build.log"
                    )
                times["image build"] = time.monotonic() - t
                size = int(base.docker("image", "inspect", "--format", "{{.Size}}", image))
                base_size = int(base.docker("image", "inspect", "--format", "{{.Size}}", base_tag))
                say(
                    f"build: {image} ({args.variant}) is {size / 1e6:.0f} MB, of which "
                    f"{base_size / 1e6:.0f} MB the debootstrap base"
                )
                if not args.build_only:
                    t = time.monotonic()
                    scenario(image, work, run_id)
                    times["scenario"] = time.monotonic() - t
            finally:
                _remove_images(before, base_tag, drop_base=args.drop_base)
    except base.Skip as why:
        say(f"SKIPPED: {why}")
        return base.SKIP
    finally:
        if args.keep_work:
            say(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    total = time.monotonic() - t0
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
    say(f"PASSED in {total:.0f} s ({steps})")
    return 0


def _remove_images(before: set[str], base_tag: str, *, drop_base: bool) -> None:
    """Every image this run made (the build's stages too), newest first; the
    cached base stays unless ``drop_base``."""
    kept = base.docker("image", "inspect", "--format", "{{.Id}}", base_tag, check=False).strip()
    made = [i for i in base.docker("images", "-aq", "--no-trunc").split() if i not in before]
    for image in made:
        if image != kept:
            base.docker("rmi", "-f", image, check=False)
    say(f"cleanup: removed the {len(set(made) - {kept})} images this run built")
    if drop_base and kept:
        base.docker("rmi", base_tag, check=False)
        say(f"cleanup: removed the base {base_tag} (--drop-base)")


if __name__ == "__main__":
    sys.exit(main())
