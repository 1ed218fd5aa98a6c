"""Generate the gRPC stubs for ``generate.proto`` with grpcio-tools (``python -m proto.build``).

Stubs land beside the .proto file, regenerated only when missing or older than the .proto. A file lock keeps
concurrent first imports (several shard processes starting at once) from racing.
"""

from __future__ import annotations

import fcntl
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent.parent
PROTO_FILE = Path(__file__).resolve().parent / "generate" / "v3" / "generate.proto"
OUTPUTS = ("generate_pb2.py", "generate_pb2_grpc.py", "generate_pb2.pyi")


def _stale() -> bool:
    out_dir = PROTO_FILE.parent
    src_mtime = PROTO_FILE.stat().st_mtime
    return any(
        not (out_dir / name).exists() or (out_dir / name).stat().st_mtime < src_mtime for name in OUTPUTS
    )


def ensure_stubs() -> None:
    """Generate the stubs if they are missing or stale; a no-op otherwise."""
    if not _stale():
        return
    lock_path = PROTO_FILE.parent / ".build.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _stale():
            _generate()


def _generate() -> None:
    from grpc_tools import protoc  # build-time dependency, imported only when generating

    import importlib.resources

    include = str(importlib.resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={PROTO_ROOT}",
        f"--pyi_out={PROTO_ROOT}",
        f"--grpc_python_out={PROTO_ROOT}",
        str(PROTO_FILE.relative_to(PROTO_ROOT)),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed to generate stubs for {PROTO_FILE}")


def main() -> int:
    ensure_stubs()
    print(f"stubs up to date in {PROTO_FILE.parent}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
