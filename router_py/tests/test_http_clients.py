"""The real Python clients (PyPI text-generation 0.7.0, huggingface_hub, openai) against the app served by
uvicorn on loopback, with the fake backend: shapes they parse and errors they raise."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from huggingface_hub import InferenceClient
from openai import OpenAI
from text_generation import AsyncClient, Client
from text_generation.errors import GenerationError, ValidationError
from text_generation.types import Message

from router_py.router_config import RouterConfig
from router_py.metrics import Metrics
from router_py.http.server import create_app
from router_py.tests.conftest import FakeBackend


@pytest.fixture(scope="module")
def base_url(tokenizer) -> Iterator[str]:
    config = RouterConfig(model_id="prism-test", max_input_tokens=64, max_total_tokens=128)
    app = create_app(FakeBackend(), tokenizer, config, Metrics(64, 128))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_text_generation_client_generate(base_url: str) -> None:
    client = Client(base_url)
    resp = client.generate("hello world", max_new_tokens=3, decoder_input_details=True, top_n_tokens=2)
    assert resp.generated_text == " t0 t304 t305"
    assert resp.details.finish_reason == "length" and resp.details.generated_tokens == 3
    assert resp.details.prefill[0].logprob is None and len(resp.details.prefill) == 3
    assert len(resp.details.top_tokens) == 3 and resp.details.seed is None
    best = client.generate("hello world", do_sample=True, best_of=2, max_new_tokens=2)
    assert len(best.details.best_of_sequences) == 1 and best.details.seed is not None


def test_text_generation_client_stream(base_url: str) -> None:
    responses = list(
        Client(base_url).generate_stream("hello world", max_new_tokens=3, stop_sequences=["t305"])
    )
    assert [r.token.id for r in responses] == [0, 304, 305]
    assert responses[-1].generated_text == " t0 t304 t305"
    assert responses[-1].details.finish_reason == "stop_sequence"


def test_text_generation_client_errors(base_url: str) -> None:
    client = Client(base_url)
    with pytest.raises(ValidationError, match="`top_n_tokens` must be >= 0 and <= 5. Given: 6"):
        client.generate("hello", top_n_tokens=6)
    with pytest.raises(ValidationError, match="stop sequences"):
        list(client.generate_stream("hello", stop_sequences=["a", "b", "c", "d", "e"]))
    with pytest.raises(GenerationError, match="Server error: boom"):
        client.generate("FAIL")
    with pytest.raises(GenerationError, match="Server error: boom"):
        list(client.generate_stream("FAIL"))


def test_text_generation_client_chat(base_url: str) -> None:
    """0.7.0's chat: its ChoiceDelta requires ``tool_calls`` and it json-decodes every ``data:`` line (no
    ``[DONE]`` case), sync and async; it sends ``top_logprobs`` and ``logprobs`` as given."""
    client, messages = Client(base_url), [Message(role="user", content="hi")]
    whole = client.chat(messages, max_tokens=3)
    chunks = list(client.chat(messages, max_tokens=3, stream=True))
    assert "".join(c.choices[0].delta.content for c in chunks) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks] == [None, None, "length"]
    assert all(c.choices[0].delta.tool_calls is None for c in chunks)

    async def async_chat() -> tuple[list, object]:
        aclient = AsyncClient(base_url)
        return [c async for c in await aclient.chat(messages, max_tokens=3, stream=True)], await aclient.chat(
            messages, max_tokens=3, logprobs=True, top_logprobs=2
        )

    async_chunks, with_logprobs = asyncio.run(async_chat())
    assert [c.choices[0].delta.content for c in async_chunks] == [c.choices[0].delta.content for c in chunks]
    assert [len(c["top_logprobs"]) for c in with_logprobs.choices[0].logprobs["content"]] == [2, 2, 2]
    with pytest.raises(ValidationError, match="when using `top_logprobs`, `logprobs` must be set to true"):
        client.chat(messages, max_tokens=3, top_logprobs=2)


def test_huggingface_hub_client(base_url: str) -> None:
    client = InferenceClient(model=base_url, provider="hf-inference")
    assert client.text_generation("hello world", max_new_tokens=2) == "hello world t0 t304"
    out = client.text_generation("hello world", max_new_tokens=2, details=True, return_full_text=False)
    assert out.generated_text == " t0 t304" and out.details.generated_tokens == 2
    streamed = list(client.text_generation("hello world", max_new_tokens=2, stream=True))
    assert streamed == [" t0", " t304"]
    chat = client.chat_completion([{"role": "user", "content": "hi"}], max_tokens=2)
    assert chat.choices[0].message.content and chat.usage.completion_tokens == 2
    chunks = list(client.chat_completion([{"role": "user", "content": "hi"}], max_tokens=2, stream=True))
    assert len(chunks) == 2 and chunks[-1].choices[0].finish_reason == "length"
    assert client.get_endpoint_info()["model_id"] == "prism-test"
    assert client.health_check()


def test_openai_client(base_url: str) -> None:
    client = OpenAI(base_url=f"{base_url}/v1", api_key="-")
    chat = client.chat.completions.create(
        model="tgi", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert chat.choices[0].finish_reason == "length" and chat.usage.total_tokens > 2
    stream = client.chat.completions.create(
        model="tgi",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == chat.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 2
    completion = client.completions.create(model="tgi", prompt="hello", max_tokens=2)
    assert completion.choices[0].text == " t0 t304"
    streamed = list(client.completions.create(model="tgi", prompt="hello", max_tokens=2, stream=True))
    assert [c.choices[0].text for c in streamed] == [" t0", " t304"]


def test_openai_stream_helper_accumulates_one_role(base_url: str) -> None:
    """The ``openai`` client's stream helper concatenates every string of the deltas: the role comes in
    the first chunk only (OpenAI's and vLLM's streams), else the final message's role was
    ``assistantassistant``."""
    client = OpenAI(base_url=f"{base_url}/v1", api_key="-")
    messages = [{"role": "user", "content": "hi"}]
    # NOTE: no max_tokens: the fake backend's EOS ends it (the helper refuses a `length` finish)
    with client.chat.completions.stream(model="tgi", messages=messages) as stream:
        final = stream.get_final_completion()
    whole = client.chat.completions.create(model="tgi", messages=messages)
    assert final.choices[0].message.role == "assistant" and final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == whole.choices[0].message.content
    chunks = list(client.chat.completions.create(model="tgi", messages=messages, max_tokens=3, stream=True))
    assert [c.choices[0].delta.role for c in chunks] == ["assistant", None, None]


def test_openai_models_list_has_vllm_max_model_len(base_url: str) -> None:
    (model,) = OpenAI(base_url=f"{base_url}/v1", api_key="-").models.list().data
    assert model.id == "prism-test" and model.owned_by == "prism-test"
    assert model.max_model_len == 128  # the fixture's max_total_tokens
