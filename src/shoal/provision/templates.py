"""The non-crypto files of a kit: shell scripts, ``local/`` defaults, readme.

The scripts resolve their own folder, so a kit works wherever it is copied,
and never embed the participant name (the kit folder's name is used) so no
name can inject shell code. They run ``"${SHOAL_PYTHON:-python3}" -m shoal``.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "RESTART_EXIT_CODE",
    "fl_admin_sh",
    "local_files",
    "readme_txt",
    "start_sh",
    "stop_fl_sh",
    "sub_start_sh",
]

#: A daemon exiting with this code asks sub_start.sh to start it again (EX_TEMPFAIL).
RESTART_EXIT_CODE = 75

_PREAMBLE = """#!/usr/bin/env bash
{comment}
set -euo pipefail
STARTUP="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
KIT="$(dirname "$STARTUP")"
"""

_START = """PID_FILE="$KIT/daemon_pid.fl"
if [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
    echo "$(basename "$KIT") is already running (pid $(cat "$PID_FILE"))" >&2
    exit 1
fi
rm -f "$KIT/shutdown.fl"
nohup bash "$STARTUP/sub_start.sh" "$@" >>"$KIT/daemon.out" 2>&1 </dev/null &
echo "$!" >"$PID_FILE"
echo "started $(basename "$KIT") (pid $!); output in $KIT/daemon.out, log in $KIT/log.txt"
"""

_SUB_START = """PYTHON="${{SHOAL_PYTHON:-python3}}"
child=""

on_signal() {{
    # Remember the request so the loop below does not restart the daemon.
    touch "$KIT/shutdown.fl"
    if [[ -n "$child" ]]; then kill -TERM "$child" 2>/dev/null || true; fi
}}
trap on_signal TERM INT

rc=0
while true; do
    "$PYTHON" -m shoal {command} --kit "$KIT" "$@" &
    child=$!
    rc=0
    wait "$child" || rc=$?
    # A trapped signal interrupts `wait`; wait again for the daemon's real exit.
    while kill -0 "$child" 2>/dev/null; do
        rc=0
        wait "$child" || rc=$?
    done
    child=""
    if [[ "$rc" -eq 0 || -f "$KIT/shutdown.fl" ]]; then
        break
    fi
    if [[ "$rc" -eq {restart} ]]; then
        pause="${{SHOAL_RESTART_DELAY:-1}}"
        echo "shoal {command}: restart requested; starting again in ${{pause}}s" >&2
    else
        pause="${{SHOAL_RESTART_DELAY:-5}}"
        echo "shoal {command}: exited with code $rc; starting again in ${{pause}}s" >&2
    fi
    sleep "$pause" &
    wait $! || true
    if [[ -f "$KIT/shutdown.fl" ]]; then
        break
    fi
done
if [[ -f "$KIT/daemon_pid.fl" && "$(cat "$KIT/daemon_pid.fl")" == "$$" ]]; then
    rm -f "$KIT/daemon_pid.fl"
fi
if [[ -f "$KIT/shutdown.fl" ]]; then
    exit 0
fi
exit "$rc"
"""

_STOP = """PID_FILE="$KIT/daemon_pid.fl"
TIMEOUT="${SHOAL_STOP_TIMEOUT:-30}"
touch "$KIT/shutdown.fl"

gone() {
    # A zombie (not yet reaped by its parent) counts as gone.
    ! kill -0 "$1" 2>/dev/null || grep -qs '^State:[[:space:]]*Z' "/proc/$1/status"
}

if [[ ! -f "$PID_FILE" ]]; then
    echo "$(basename "$KIT") is not running (no $PID_FILE)"
    exit 0
fi
pid="$(cat "$PID_FILE")"
if gone "$pid" || ! kill -TERM "$pid" 2>/dev/null; then
    echo "$(basename "$KIT") is not running (stale pid $pid)"
    rm -f "$PID_FILE"
    exit 0
fi
echo "stopping $(basename "$KIT") (pid $pid)"
for _ in $(seq 1 $((TIMEOUT * 10))); do
    if gone "$pid"; then
        rm -f "$PID_FILE"
        echo "stopped"
        exit 0
    fi
    sleep 0.1
done
echo "$(basename "$KIT") still running after ${TIMEOUT}s (pid $pid)" >&2
exit 1
"""

_ADMIN = """exec "${SHOAL_PYTHON:-python3}" -m shoal admin --kit "$KIT" "$@"
"""


def _script(comment: str, body: str) -> str:
    lines = "\n".join(f"# {line}" if line else "#" for line in comment.splitlines())
    return _PREAMBLE.format(comment=lines) + body


def start_sh() -> str:
    """``start.sh``: run sub_start.sh in the background with nohup."""
    return _script(
        "Start this participant in the background. The supervisor's pid goes to\n"
        "<kit>/daemon_pid.fl, its output to <kit>/daemon.out; the daemon itself logs\n"
        "to <kit>/log.txt. Stop it with stop_fl.sh. Arguments go to the daemon.",
        _START,
    )


def sub_start_sh(command: str) -> str:
    """``sub_start.sh``: run ``shoal <command> --kit <kit>`` and restart it when needed."""
    return _script(
        f"Run `shoal {command}` in the foreground and start it again when it stops:\n"
        f"exit 0 or a <kit>/shutdown.fl file ends the loop, exit {RESTART_EXIT_CODE} means\n"
        '"restart requested", any other exit is restarted after SHOAL_RESTART_DELAY\n'
        "seconds (default 5). SIGTERM stops it for good. Containers run this script.",
        _SUB_START.format(command=command, restart=RESTART_EXIT_CODE),
    )


def stop_fl_sh() -> str:
    """``stop_fl.sh``: touch shutdown.fl and SIGTERM the supervisor."""
    return _script(
        "Stop the participant started by start.sh: no restart, SIGTERM, then wait up\n"
        "to SHOAL_STOP_TIMEOUT seconds (default 30) for it to exit.",
        _STOP,
    )


def fl_admin_sh() -> str:
    """``fl_admin.sh``: the admin console for this kit."""
    return _script(
        "Open the shoal admin console with this kit's identity.\n"
        "Arguments go to `shoal admin` (e.g. a command to run non-interactively).",
        _ADMIN,
    )


def _log_config() -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "standard": {"format": "%(asctime)s - %(name)s - %(levelname)s - %(message)s"}
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "standard",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {"grpc": {"level": "WARNING"}},
        "root": {"level": "INFO", "handlers": ["console"]},
    }


def _resources(participant_type: str) -> dict[str, Any]:
    if participant_type == "server":
        return {"format": 1, "max_concurrent_jobs": 4}
    return {"format": 1, "max_concurrent_jobs": 2, "num_gpus": 0}


def local_files(participant_type: str) -> dict[str, str]:
    """Editable ``local/`` files: logging (``logging.config.dictConfig``) and resources."""
    files = {"log_config.json": _dump(_log_config())}
    if participant_type in ("server", "client"):
        files["resources.json"] = _dump(_resources(participant_type))
    if participant_type == "client":
        files["retention.json"] = _dump(_retention())
        files["policy.yml"] = SITE_POLICY_YML
    return files


#: A site's ``local/policy.yml`` as provisioned: every setting at its default
#: (which allow what shoal always allowed), commented, for the operator to
#: edit (shoal.client.policy; docs/security.md, "Site policy").
SITE_POLICY_YML = """\
# This site's policy: which jobs it runs, and within what limits.
# Read again at every job start: an edit applies to the next job, no restart.
# A job refused here is refused before any of its code is unpacked; the
# submitter sees "refused by site <name>'s policy: <reason>".
# Absent settings allow everything, as below. docs/security.md, "Site policy".

# Who may run jobs here. A list restricts; leave a key out to allow any.
# An admin named in `admins` may run jobs whatever their org and role;
# otherwise the submitter's org must be in `orgs` and role in `roles`
# (project_admin, org_admin, lead, member), where those are given.
submitters: {}
#  orgs: [my-org]
#  roles: [lead, project_admin]
#  admins: [alice@my-org.example]

# Which code may run: any | none | sha256 (the job archive's SHA-256 must be
# listed below) | signed (the job must be signed by a listed signer).
code:
  allow: any
#  sha256: []
#  signers: []

# Workflows that may run here (leave out: any), e.g. [fedavg, fedprox].
# workflows: [fedavg]

# Filters that must run on what leaves (result_out) or enters (task_in) this
# site: a job whose chain (local/filters.yml and the job's own filters)
# lacks one is refused.
filters: {}
#  result_out: [clip]

# Caps on each job (leave out: none). memory_mb: memory each job process may
# allocate; cpu_seconds: CPU time of each process; wall_time_s: the job is
# stopped after it; processes: processes of the job's user; concurrent_jobs:
# one more is refused; gpus: CUDA devices jobs may see ([]: none).
resources: {}
#  memory_mb: 8192
#  cpu_seconds: 36000
#  wall_time_s: 86400
#  processes: 512
#  concurrent_jobs: 2
#  gpus: ["0"]

# Whether this site's training metrics may go to an outside experiment
# tracker (MLflow, W&B).
metrics_may_leave: true
"""


def _retention() -> dict[str, Any]:
    # The defaults of shoal.client.retention.RetentionPolicy, written out so an
    # operator sees what the site keeps and edits it in place.
    return {
        "format": 1,
        "comment": (
            "How long this site keeps job folders (<workspace>/jobs/<job_id>/). "
            "keep_finished_days: days after a finished job last changed (null: forever); "
            "keep_deleted: keep a job's folder when it is deleted on the server; "
            "sweep_interval_s: seconds between sweeps (one also runs at start)."
        ),
        "keep_finished_days": 7,
        "keep_deleted": False,
        "sweep_interval_s": 3600,
    }


def _dump(doc: Any) -> str:
    return json.dumps(doc, indent=2) + "\n"


def readme_txt(project: str, name: str, participant_type: str) -> str:
    """``readme.txt``: what the kit is and how to use it."""
    head = (
        f"shoal startup kit: {name} ({participant_type}) of project {project}\n"
        f"{'=' * 60}\n\n"
        "startup/  signed by the project CA; do not edit (a changed file stops the kit\n"
        "          from loading). Holds the CA certificate, this participant's\n"
        "          certificate and private key, its config and scripts.\n"
        "local/    yours to edit: logging (log_config.json), resources and, on a site,\n"
        "          how long job folders are kept (retention.json).\n\n"
        "Keep the private key secret: anyone holding it is this participant.\n"
        "The scripts use SHOAL_PYTHON (default python3), which must have shoal installed.\n\n"
    )
    if participant_type == "admin":
        return head + (
            "Open the admin console:       startup/fl_admin.sh\n"
            "Put job folders to submit in: transfer/\n"
        )
    return head + (
        "Start in the background:  startup/start.sh     (output: daemon.out, log: log.txt)\n"
        "Stop:                     startup/stop_fl.sh\n"
        "Run in the foreground:    startup/sub_start.sh (containers do this)\n"
        f"Or directly:              python -m shoal {participant_type} --kit <this folder>\n"
    )
