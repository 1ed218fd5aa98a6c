"""Fixtures: the tiny demo models, built once per session, and runners/services over them."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from shard.demo_model import build_demo_model
from shard.factory import build_runner
from shard.server import TextGenerationService
from shard.tests.helpers import make_config


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_model(tmp_path_factory.mktemp("tiny-llama"), "llama", "tiny")


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_model(tmp_path_factory.mktemp("tiny-qwen3"), "qwen3", "tiny")


@pytest.fixture(params=["llama", "qwen3"])
def tiny_model(request: pytest.FixtureRequest, tiny_llama: Path, tiny_qwen3: Path) -> Path:
    return tiny_llama if request.param == "llama" else tiny_qwen3


@pytest.fixture
def llama_service(tiny_llama: Path) -> TextGenerationService:
    config = make_config(tiny_llama)
    return TextGenerationService(build_runner(config), config)


@pytest.fixture
async def uds_stub(tiny_llama: Path):
    """(stub, service, config): a real grpc.aio server on a Unix socket in this event loop, and its client."""
    import grpc

    from proto.generate.v3 import generate_pb2_grpc as pb_grpc
    from shard.server import build_server

    folder = tempfile.mkdtemp(prefix="shard-", dir="/tmp")
    config = make_config(tiny_llama, uds_path=f"{folder}/s", num_blocks=64)
    service = TextGenerationService(build_runner(config), config)
    server = build_server(service, config)
    await server.start()
    channel = grpc.aio.insecure_channel(f"unix://{config.socket_path}")
    try:
        yield pb_grpc.TextGenerationServiceStub(channel), service, config
    finally:
        await channel.close()
        await server.stop(grace=None)
        shutil.rmtree(folder, ignore_errors=True)
