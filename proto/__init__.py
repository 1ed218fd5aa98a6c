"""TGI's generate.v3 protocol: the .proto source and its generated stubs.

Import the stubs as ``from proto.generate.v3 import generate_pb2, generate_pb2_grpc``; they are generated from
``proto/generate/v3/generate.proto`` by :mod:`proto.build` on first import (or ``python -m proto.build``), and are
never committed or edited by hand.
"""
