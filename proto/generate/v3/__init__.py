"""Generated stubs of ``generate.v3`` (built on first import by :mod:`proto.build`)."""

from proto.build import ensure_stubs

ensure_stubs()

from proto.generate.v3 import generate_pb2, generate_pb2_grpc  # noqa: E402

__all__ = ["generate_pb2", "generate_pb2_grpc"]
