"""Regenerate the Python stubs in protos/mlxserve/v1 from the .proto files.

Run from anywhere: `python protos/generate.py`. The stubs are committed so that a fresh clone
works without a build step; tests/unit/test_protos.py fails when they drift from the .proto files.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_DIR = PROTO_ROOT / "mlxserve" / "v1"


def generate(out_dir: Path) -> list[Path]:
    """Run grpcio-tools' protoc over every .proto file, writing stubs under out_dir."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(PROTO_DIR.glob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(PROTO_ROOT)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    return sorted((out_dir / "mlxserve" / "v1").glob("*_pb2*.py*"))


if __name__ == "__main__":
    written = generate(PROTO_ROOT)
    print("\n".join(str(p) for p in written), file=sys.stderr)
