"""Fixtures for the HTTP layer: a tiny tokenizer trained on the spot and a fake in-process Backend that echoes
the prompt's tokens deterministically, so no shard is needed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from tokenizers import Tokenizer as HfTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from router_py.router_config import RouterConfig
from router_py.backend_api import (
    BackendInfo,
    EndEvent,
    InferError,
    InferEvent,
    PrefillTokens,
    Token,
    TokenEvent,
    ValidRequest,
)
from router_py.metrics import Metrics
from router_py.http.server import create_app
from router_py.tokenizer import Tokenizer

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'bad' %}{{ raise_exception('bad role') }}{% endif %}"
    "<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if tools %}<|tools|>{{ tools | tojson }}{% endif %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CORPUS = [
    "hello world",
    "the quick brown fox jumps over the lazy dog",
    "héllo wörld ünïcode",
    "system user",
] * 20


def build_model_dir(root: Path) -> Path:
    """tokenizer.json (byte-level BPE, <s> prepended) + tokenizer_config.json with a chat template."""
    hf = HfTokenizer(models.BPE(unk_token=None))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    hf.train_from_iterator(CORPUS, trainer)
    bos = hf.token_to_id("<s>")
    hf.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    root.mkdir(parents=True, exist_ok=True)
    hf.save(str(root / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "chat_template": CHAT_TEMPLATE}
    (root / "tokenizer_config.json").write_text(json.dumps(config))
    return root


class FakeBackend:
    """Yields token ``i`` = the prompt's ``i``-th token id (cycling), text ``" t<id>"``; ends with eos after
    ``eos_after`` tokens unless max_new_tokens comes first. Prompts containing ``FAIL`` raise a generation
    error, ``INCOMPLETE`` ends without an EndEvent, ``SLOW`` waits on ``gate`` after the first token. Every
    request lands in ``finished`` (reached its end) or ``closed`` (abandoned by the consumer, or failed)."""

    def __init__(self, eos_after: int = 5) -> None:
        self.info = BackendInfo(
            max_input_tokens=64,
            max_total_tokens=128,
            max_batch_total_tokens=10_000,
            block_size=16,
            requires_padding=False,
            dtype="float32",
            device_type="cpu",
            support_chunking=True,
            use_prefix_caching=True,
        )
        self.eos_after = eos_after
        self.requests: list[ValidRequest] = []
        self.closed: list[ValidRequest] = []
        self.finished: list[ValidRequest] = []
        self.gate = asyncio.Event()
        self.healthy = True

    async def health(self) -> bool:
        return self.healthy

    async def generate_stream(self, request: ValidRequest) -> AsyncIterator[InferEvent]:
        self.requests.append(request)
        done = False
        try:
            async for event in self._events(request):
                done = isinstance(event, EndEvent) or "INCOMPLETE" in request.inputs
                yield event
        finally:
            (self.finished if done else self.closed).append(request)

    async def _events(self, request: ValidRequest) -> AsyncIterator[InferEvent]:
        if "FAIL" in request.inputs:
            raise InferError("generation", "Server error: boom")
        ids = request.input_ids
        if request.decoder_input_details:
            # as the shard: each position's top_n_tokens alternatives (the first position none), the likeliest
            # the prompt's next token itself
            tops = [[] if k == 0 else [Token(i + j, f" t{i + j}", -1.0 - j) for j in range(request.top_n_tokens)]
                    for k, i in enumerate(ids)]
            yield PrefillTokens([Token(i, f" t{i}", None if k == 0 else -1.0) for k, i in enumerate(ids)],
                                tops if request.top_n_tokens else [], [0] + [1] * (len(ids) - 1))
        text = ""
        limit = min(request.stopping.max_new_tokens, self.eos_after)
        for n in range(limit):
            if "SLOW" in request.inputs and n > 0:
                await self.gate.wait()
            await asyncio.sleep(0)
            token_id = ids[n % len(ids)]
            token = Token(token_id, f" t{token_id}", self._logprob(request, n))
            text += token.text
            tops = [
                Token(token_id + k, f" t{token_id + k}", -float(k + 1)) for k in range(request.top_n_tokens)
            ]
            if "INCOMPLETE" in request.inputs and n == limit - 1:
                return
            stop = next((s for s in request.stopping.stop_sequences if s in text), None)
            if n == limit - 1 or stop:
                yield self._end(request, token, tops, text, n + 1, stop)
                return
            yield TokenEvent(token, tops)

    def _end(
        self, request: ValidRequest, token: Token, tops: list[Token], text: str, n: int, stop: str | None
    ):
        if stop:
            reason = "stop_sequence"
        else:
            reason = "length" if request.stopping.max_new_tokens <= self.eos_after else "eos_token"
        seed = request.sampling.seed if request.sampling.do_sample else None
        return EndEvent(token, tops, generated_text=text, generated_tokens=n, finish_reason=reason, seed=seed)

    @staticmethod
    def _logprob(request: ValidRequest, n: int) -> float:
        if not request.sampling.do_sample:
            return -0.5
        return -((request.sampling.seed + n) % 7) / 10 - 0.01


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def tokenizer(model_dir: Path) -> Tokenizer:
    return Tokenizer.from_model_dir(model_dir)


@pytest.fixture
def config() -> RouterConfig:
    return RouterConfig(model_id="prism-test", max_input_tokens=64, max_total_tokens=128)


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def metrics(config: RouterConfig) -> Metrics:
    return Metrics(config.max_input_tokens, config.max_total_tokens)


@pytest.fixture
def app(backend: FakeBackend, tokenizer: Tokenizer, config: RouterConfig, metrics: Metrics):
    return create_app(backend, tokenizer, config, metrics)


@pytest.fixture
async def client(app) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as c:
        yield c
