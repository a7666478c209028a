"""Regenerate (or, with --check, verify) the generated gRPC code.

Generated code lives only under src/shoal/_proto/; CI fails if the committed
copy differs from what the pinned grpcio-tools produces.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT = ROOT / "src" / "shoal" / "_proto"


def generate(dest: Path) -> list[Path]:
    protos = sorted(PROTO_ROOT.glob("shoal/v1/*.proto"))
    tmp = dest / "gen"
    tmp.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(p) for p in protos],
        ],
        check=True,
    )
    out: list[Path] = []
    for f in sorted((tmp / "shoal" / "v1").iterdir()):
        text = f.read_text()
        # protoc emits absolute imports ("from shoal.v1 import ..."); ours live in shoal._proto.
        text = text.replace("from shoal.v1 import", "from shoal._proto import")
        target = dest / f.name
        target.write_text(text)
        out.append(target)
    shutil.rmtree(tmp)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed code differs")
    args = parser.parse_args()
    if not args.check:
        for f in [*OUT.glob("*_pb2.py*"), *OUT.glob("*_pb2_grpc.py")]:
            f.unlink()
        for f in generate(OUT):
            print(f"wrote {f.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as d:
        fresh = generate(Path(d))
        stale = [
            f.name
            for f in fresh
            if not (OUT / f.name).exists() or not filecmp.cmp(f, OUT / f.name, shallow=False)
        ]
    if stale:
        print(f"generated code is out of date: {', '.join(stale)}; run `make protos`")
        return 1
    print("generated protobuf code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
