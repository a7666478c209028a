"""What signed jobs cost, per job: signing at submit, checking at each site.

    python bench/signing.py [--quick] [--repeat N] [--archive-mib M]

- ``sign_job`` (the admin's tool, once per submit or clone): ECDSA P-256
  over the canonical document, key loaded from the kit's PEM each time;
- ``verify_job_signature`` (the server at submit, then every site before it
  unpacks): certificate chain to the CA, validity, role, signature and the
  bindings; with the revocation list read and checked as a site does it
  (its own ``local/crl.pem`` and the server's copy, each with 100 entries);
- hashing the archive with SHA-256, which the admin's tool now does once per
  submit (server and sites hashed it already): ms per MiB;
- the bytes the signature adds to the job's header and its store row.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, header, stats, table  # noqa: E402

from shoal.jobs.signature import new_job_id, sign_job, verify_job_signature  # noqa: E402
from shoal.provision.pki import (  # noqa: E402
    CertificateAuthority,
    TLSMaterial,
    load_crl_serials,
    load_revoked_serials,
)
from shoal.provision.project import Participant  # noqa: E402


def _ms(samples: list[float]) -> list[str]:
    s = stats(samples)
    return [f"{s['median'] * 1000:.3f}", f"{s['p90'] * 1000:.3f}", f"{s['min'] * 1000:.3f}"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="50 repeats, a 4 MiB archive")
    parser.add_argument("--repeat", type=int, default=500)
    parser.add_argument("--archive-mib", type=int, default=64)
    args = parser.parse_args()
    repeat = 50 if args.quick else args.repeat
    mib = 4 if args.quick else args.archive_mib
    header("signed jobs: sign at submit, verify at each site")

    ca = CertificateAuthority.create("bench_project")
    issued = ca.issue(
        Participant(name="admin@nvidia.com", type="admin", org="nvidia", role="project_admin"),
        validity_days=30,
    )
    tls = TLSMaterial(ca_pem=ca.cert_pem, cert_pem=issued.cert_pem, key_pem=issued.key_pem)
    crl_pem = ca.build_crl(range(1000, 1100))
    digest = hashlib.sha256(b"archive").hexdigest()

    sign_s, verify_s, site_s = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        crl_path = Path(tmp) / "crl.pem"
        crl_path.write_bytes(crl_pem)
        for _ in range(repeat):
            job_id = new_job_id()
            t0 = time.perf_counter()
            sig = sign_job(job_id=job_id, archive_sha256=digest, tls=tls)
            t1 = time.perf_counter()
            verify_job_signature(
                sig.to_json(),
                ca_pem=ca.cert_pem,
                job_id=job_id,
                archive_sha256=digest,
                submitter="admin@nvidia.com",
            )
            t2 = time.perf_counter()
            # What a site does: both CRLs read and checked, then the signature.
            revoked = load_revoked_serials(crl_path, ca.cert_pem)
            revoked |= load_crl_serials(crl_pem, ca.cert_pem)
            verify_job_signature(
                json.loads(json.dumps(sig.to_json())),
                ca_pem=ca.cert_pem,
                job_id=job_id,
                archive_sha256=digest,
                submitter="admin@nvidia.com",
                submitter_org="nvidia",
                revoked=revoked,
            )
            t3 = time.perf_counter()
            sign_s.append(t1 - t0)
            verify_s.append(t2 - t1)
            site_s.append(t3 - t2)

    blob = os.urandom(mib * 2**20)
    hash_s = []
    for _ in range(3 if args.quick else 5):
        t0 = time.perf_counter()
        hashlib.sha256(blob).hexdigest()
        hash_s.append(time.perf_counter() - t0)
    per_mib = stats(hash_s)["median"] / mib

    emit()
    table(
        [
            ["sign_job (admin, per submit/clone)", repeat, *_ms(sign_s)],
            ["verify_job_signature (server at submit)", repeat, *_ms(verify_s)],
            ["site check: 2 CRLs of 100 entries + verify", repeat, *_ms(site_s)],
        ],
        ["step", "n", "median ms", "p90 ms", "min ms"],
    )
    emit(
        f"\nsha256 of the archive (admin's tool, new per submit): "
        f"{per_mib * 1000:.2f} ms/MiB ({mib} MiB archive: {per_mib * mib * 1000:.1f} ms)"
    )
    stored = json.dumps(sig.to_json())
    emit(
        f"signature bytes per job (header and store row, certificate included): {len(stored)}; "
        f"CRL of 100 entries sent with each job: {len(crl_pem)}"
    )


if __name__ == "__main__":
    main()
