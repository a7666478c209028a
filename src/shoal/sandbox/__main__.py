"""``python -m shoal.sandbox PLAN -- ARGV...``: confine this process, then exec ARGV.

The daemons start every job process through this launcher, so that the
confinement (see :mod:`shoal.sandbox`) is in force before the first line
of job code runs, and is inherited by everything it starts. Exit code 126
(as a shell's "cannot execute") when the plan requires confinement and the
kernel cannot give it.
"""

from __future__ import annotations

import os
import sys

from shoal.sandbox import Confinement, apply


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m shoal.sandbox PLAN_JSON -- PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    plan = Confinement.from_json(argv[0])
    try:
        applied = apply(plan)
    except OSError as exc:
        print(
            f"shoal: refusing to run {plan.label} code unconfined: {exc}. "
            "Run on a kernel with Landlock (Linux 5.13+, enabled in the LSM list) or set "
            "SHOAL_CONFINEMENT=off on the daemon (job code can then read its keys).",
            file=sys.stderr,
        )
        return 126
    print(f"shoal: {plan.label} code confined: {applied}", file=sys.stderr, flush=True)
    program = argv[2:]
    os.execv(program[0], program)
    return 127  # not reached: execv replaces this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
