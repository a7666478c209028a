"""Job definitions: ``job.yml`` + ``app/``, and their archives.

    spec = load_job_spec(Path("hello-tf2"))
    report = check_job(Path("hello-tf2"))           # every problem at once
    new_job("my-job", framework="pt")               # a runnable job from a template
    pack_job(Path("hello-tf2"), Path("hello-tf2.zip"))
    safe_extract(Path("hello-tf2.zip"), Path("jobs/42/job"))

The format is documented in docs/jobs.md.
"""

from __future__ import annotations

from shoal.jobs.archive import (
    MAX_ARCHIVE_BYTES,
    MAX_FILES,
    MAX_RATIO,
    MAX_TOTAL_BYTES,
    ExtractStats,
    check_archive_size,
    pack_job,
    safe_extract,
)
from shoal.jobs.check import JobCheck, check_job
from shoal.jobs.scaffold import FRAMEWORKS, NewJob, new_job
from shoal.jobs.spec import (
    APP_DIR,
    JOB_FILE,
    ClientAppSpec,
    JobSpec,
    ServerAppSpec,
    WorkflowSpec,
    find_job_root,
    load_job_spec,
    parse_job_spec,
    read_job_file_in_zip,
)

__all__ = [
    "APP_DIR",
    "FRAMEWORKS",
    "JOB_FILE",
    "MAX_ARCHIVE_BYTES",
    "MAX_FILES",
    "MAX_RATIO",
    "MAX_TOTAL_BYTES",
    "ClientAppSpec",
    "ExtractStats",
    "JobCheck",
    "JobSpec",
    "NewJob",
    "ServerAppSpec",
    "WorkflowSpec",
    "check_archive_size",
    "check_job",
    "find_job_root",
    "load_job_spec",
    "new_job",
    "pack_job",
    "parse_job_spec",
    "read_job_file_in_zip",
    "safe_extract",
]
