"""Google Cloud IAM bindings for bucket-backed workspaces, as a shell script.

Each participant's pods run as the Kubernetes ServiceAccount ``shoal`` in its
own namespace; through Workload Identity Federation for GKE that is an IAM
principal. The bindings give each principal ``roles/storage.objectUser`` on
its own storage only, so one site cannot read another's jobs or models:

* ``--bucket 'acme-fl-{participant}'``: a bucket per participant, bound at the
  bucket (the simplest isolation: nothing to get wrong in a prefix);
* ``--bucket acme-fl``: one bucket, a managed folder per participant (needs
  uniform bucket-level access), bound at the folder, never at the bucket.

    print(iam_script(prod, options))     # written as OUT/gcp-iam.sh
"""

from __future__ import annotations

from shoal.deploy.kits import ProdDir, dns_label
from shoal.deploy.objects import bucket_name
from shoal.deploy.options import K8sOptions

__all__ = ["iam_script", "principal"]


def principal(namespace: str) -> str:
    """The IAM principal of namespace's ``shoal`` ServiceAccount ($PROJECT_* filled by the shell)."""
    return (
        "principal://iam.googleapis.com/projects/$PROJECT_NUMBER/locations/global/"
        f"workloadIdentityPools/$PROJECT_ID.svc.id.goog/subject/ns/{namespace}/sa/shoal"
    )


def iam_script(prod: ProdDir, options: K8sOptions) -> str:
    assert options.bucket
    shared = "{participant}" not in options.bucket
    participants = (
        [(prod.server.name, prod.server.namespace)] if options.bucket_for == "all" else []
    )
    participants += [(s.name, s.namespace) for s in prod.sites]
    lines = [
        "#!/bin/sh",
        "# Bucket access for each participant's ServiceAccount `shoal` (Workload Identity",
        "# Federation for GKE): read and write its own storage, nothing else. Run once,",
        "# as someone who may set IAM policy on the bucket(s). A site in another",
        "# organisation's project runs only its own lines, with its own PROJECT_*.",
        "set -eu",
        ': "${PROJECT_ID:?set PROJECT_ID (the cluster\'s project)}"',
        ': "${PROJECT_NUMBER:?set PROJECT_NUMBER (gcloud projects describe $PROJECT_ID)}"',
    ]
    if shared:
        lines += [
            "# One bucket, one managed folder per participant, bound at the folder only.",
            "# Managed folders need uniform bucket-level access:",
            f"gcloud storage buckets update gs://{options.bucket} --uniform-bucket-level-access",
        ]
    for name, namespace in participants:
        member = principal(namespace)
        lines.append(f"# {name} (namespace {namespace})")
        if shared:
            folder = f"gs://{options.bucket}/{dns_label(name)}/"
            lines.append(f"gcloud storage managed-folders create {folder} || true")
            lines.append(
                f"gcloud storage managed-folders add-iam-policy-binding {folder} "
                f'--member="{member}" --role=roles/storage.objectUser'
            )
        else:
            bucket = bucket_name(options, name)
            lines.append(
                f"gcloud storage buckets add-iam-policy-binding gs://{bucket} "
                f'--member="{member}" --role=roles/storage.objectUser'
            )
    return "\n".join(lines) + "\n"
