"""Regenerate the protobuf/gRPC modules of this package from proto/mosix.proto.

Usage: ``python -m mosixd.wire.regenerate [OUTDIR]`` (needs grpcio-tools, a test dependency).
The generated files are committed so that an install needs no code generator; the test
suite regenerates them into a temporary directory and compares.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto" / "mosix.proto"


def regenerate(outdir: Path) -> list[Path]:
    """Write mosix_pb2.py, mosix_pb2.pyi and mosix_pb2_grpc.py under outdir/mosixd/wire."""
    from grpc_tools import protoc  # test/dev dependency only

    outdir.mkdir(parents=True, exist_ok=True)
    # The virtual include path makes the generated imports read "from mosixd.wire import ...".
    args = [
        "protoc",
        f"-Imosixd/wire={PROTO.parent}",
        f"--python_out={outdir}",
        f"--pyi_out={outdir}",
        f"--grpc_python_out={outdir}",
        str(PROTO),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    gen = outdir / "mosixd" / "wire"
    return sorted(gen.glob("mosix_pb2*"))


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    for path in regenerate(target):
        print(path)
