"""Real clients against the launched stack: the PyPI ``text-generation`` client (sync and async),
``huggingface_hub.InferenceClient`` and the ``openai`` client, each getting TGI's documented shapes; plus a few
bad requests end to end (the full table runs in-process in the router's tests)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest
from huggingface_hub import InferenceClient
from text_generation import AsyncClient, Client
from text_generation.errors import ValidationError
from text_generation.types import Message

from conftest import Stack, child_pid

PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def client(stack: Stack) -> Client:
    return Client(stack.url, timeout=120)


def stop_word(client: Client) -> tuple[str, int]:
    """A non-empty token text greedy decoding produces at step >= 2, and that step (1-based)."""
    details = client.generate(PROMPT, max_new_tokens=12).details
    for i, tok in enumerate(details.tokens[1:], start=2):
        if tok.text.strip() and tok.text.isprintable():
            return tok.text, i
    pytest.fail(f"no printable token in {details.tokens}")


# ---- text-generation (PyPI) ------------------------------------------------------------------------------


def test_generate_with_details_prefill_and_top_n(client: Client) -> None:
    r = client.generate(PROMPT, max_new_tokens=6, decoder_input_details=True, top_n_tokens=2)
    d = r.details
    assert d.finish_reason in ("length", "eos_token") and d.generated_tokens == len(d.tokens) <= 6
    assert d.seed is None  # greedy
    assert d.prefill and d.prefill[0].logprob is None and all(t.logprob is not None for t in d.prefill[1:])
    assert len(d.top_tokens) == len(d.tokens) and all(1 <= len(top) <= 2 for top in d.top_tokens)
    assert r.generated_text == "".join(t.text for t in d.tokens)


def test_seeded_sampling_repeats_and_reports_the_seed(client: Client) -> None:
    a = client.generate(PROMPT, max_new_tokens=8, do_sample=True, seed=42, temperature=0.8)
    b = client.generate(PROMPT, max_new_tokens=8, do_sample=True, seed=42, temperature=0.8)
    assert a.generated_text == b.generated_text and a.details.seed == 42


def test_stop_sequence_ends_generation(client: Client) -> None:
    word, step = stop_word(client)
    r = client.generate(PROMPT, max_new_tokens=12, stop_sequences=[word])
    assert r.details.finish_reason == "stop_sequence"
    assert r.generated_text.endswith(word) and r.details.generated_tokens <= step


def test_best_of_returns_the_other_sequences(client: Client) -> None:
    r = client.generate(PROMPT, max_new_tokens=4, best_of=2, do_sample=True)
    assert len(r.details.best_of_sequences) == 1
    assert r.details.best_of_sequences[0].generated_tokens >= 1


def test_generate_stream_ends_with_text_and_details(client: Client) -> None:
    events = list(client.generate_stream(PROMPT, max_new_tokens=5))
    whole = client.generate(PROMPT, max_new_tokens=5).generated_text
    assert [e.generated_text for e in events[:-1]] == [None] * (len(events) - 1)
    assert events[-1].generated_text == whole == "".join(e.token.text for e in events)
    assert events[-1].details.generated_tokens == len(events)


def test_validation_error_is_typed(client: Client) -> None:
    with pytest.raises(ValidationError, match="Input validation error: `stop` supports up to 4"):
        client.generate(PROMPT, stop_sequences=["a", "b", "c", "d", "e"])


def test_prompt_past_max_total_tokens_gets_the_total_error(client: Client) -> None:
    """TGI checks ``inputs + max_new_tokens`` before the prompt alone: a prompt past max_total_tokens gets the
    total's message, as TGI's clients see it."""
    total = r"Input validation error: `inputs` tokens \+ `max_new_tokens` must be <= \d+\. Given: \d+"
    with pytest.raises(ValidationError, match=total + " `inputs` tokens and 20 `max_new_tokens`"):
        client.generate("x " * 5000, max_new_tokens=20)


async def test_async_client_generate_and_stream(stack: Stack) -> None:
    c = AsyncClient(stack.url, timeout=120)
    r = await c.generate(PROMPT, max_new_tokens=5, decoder_input_details=True)
    events = [e async for e in c.generate_stream(PROMPT, max_new_tokens=5)]
    assert events[-1].generated_text == r.generated_text
    assert r.details.prefill[0].logprob is None


async def test_text_generation_and_openai_clients_stream_the_same_chat(stack: Stack) -> None:
    """One greedy chat streamed by the 0.7.0 client (sync and async: its ChoiceDelta requires ``tool_calls``,
    and it has no case for ``[DONE]``) and by the ``openai`` client, against the non-streamed answer."""
    messages = [Message(role="user", content="Say hi")]
    sync = Client(stack.url, timeout=120)
    whole = sync.chat(messages, max_tokens=8, temperature=0).choices[0]
    streamed = list(sync.chat(messages, max_tokens=8, temperature=0, stream=True))
    stream = await AsyncClient(stack.url, timeout=120).chat(messages, max_tokens=8, temperature=0, stream=True)
    async_streamed = [c async for c in stream]
    oa = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="-", timeout=120)
    oa_streamed = list(oa.chat.completions.create(
        model="tgi", messages=[{"role": "user", "content": "Say hi"}], max_tokens=8, temperature=0, stream=True,
        logprobs=True, top_logprobs=2,
    ))
    assert whole.message.content
    for chunks in (streamed, async_streamed, oa_streamed):
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.message.content
        assert chunks[-1].choices[0].finish_reason == whole.finish_reason
        assert all(c.choices[0].delta.tool_calls is None for c in chunks)
    assert all(len(c.choices[0].logprobs.content[0].top_logprobs) == 2 for c in oa_streamed)


def test_top_logprobs_without_logprobs_is_refused(stack: Stack) -> None:
    oa = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="-", timeout=120, max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        oa.chat.completions.create(model="tgi", messages=[{"role": "user", "content": "hi"}], top_logprobs=2)
    assert "`logprobs` must be set to true" in str(refused.value.body)  # the client keeps TGI's error there
    with pytest.raises(ValidationError, match="`top_logprobs` must be >= 0 and <= 5. Given: 6"):
        Client(stack.url, timeout=120).chat([Message(role="user", content="hi")], logprobs=True, top_logprobs=6)


# ---- huggingface_hub --------------------------------------------------------------------------------------


def test_inference_client_text_generation(stack: Stack) -> None:
    hub = InferenceClient(model=stack.url, timeout=120)
    text = hub.text_generation(PROMPT, max_new_tokens=5)
    full = hub.text_generation(PROMPT, max_new_tokens=5, details=True)
    assert isinstance(text, str) and text.startswith(PROMPT)  # "/" defaults return_full_text to true
    assert full.details.generated_tokens == len(full.details.tokens)
    streamed = list(hub.text_generation(PROMPT, max_new_tokens=5, stream=True, return_full_text=False))
    assert "".join(streamed) == text[len(PROMPT):]


def test_inference_client_chat_info_and_health(stack: Stack) -> None:
    hub = InferenceClient(model=stack.url, provider="hf-inference", timeout=120)
    messages = [{"role": "user", "content": "Say hi"}]
    out = hub.chat_completion(messages, max_tokens=5, temperature=0)
    chunks = list(hub.chat_completion(messages, max_tokens=5, temperature=0, stream=True))
    assert out.choices[0].message.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == out.choices[0].message.content
    assert out.usage.completion_tokens <= 5
    info = hub.get_endpoint_info()
    assert info["router"] == "text-generation-router" and info["max_total_tokens"] > info["max_input_tokens"]
    assert hub.health_check() is True


# ---- openai -----------------------------------------------------------------------------------------------


def test_openai_chat_and_completions(stack: Stack) -> None:
    oa = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="-", timeout=120)
    messages = [{"role": "user", "content": "Say hi"}]
    chat = oa.chat.completions.create(model="tgi", messages=messages, max_tokens=5, temperature=0)
    stream = oa.chat.completions.create(model="tgi", messages=messages, max_tokens=5, temperature=0, stream=True)
    assert chat.object == "chat.completion" and chat.choices[0].finish_reason in ("length", "stop")
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == chat.choices[0].message.content
    comp = oa.completions.create(model="tgi", prompt=PROMPT, max_tokens=5, temperature=0)
    parts = oa.completions.create(model="tgi", prompt=PROMPT, max_tokens=5, temperature=0, stream=True)
    assert comp.object == "text_completion"
    assert "".join(p.choices[0].text for p in parts) == comp.choices[0].text


def test_openai_stream_helper_models_and_empty_stop(stack: Stack) -> None:
    """The client's stream helper folds the deltas (concatenating strings: one role, in the first chunk);
    vLLM's ``max_model_len`` on /v1/models; an empty stop string stops nothing."""
    oa = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="-", timeout=120)
    messages = [{"role": "user", "content": "Say hi"}]
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    with oa.chat.completions.stream(
        model="tgi", messages=messages, max_tokens=30, temperature=0, response_format=fmt
    ) as stream:
        final = stream.get_final_completion().choices[0]
    assert final.message.role == "assistant" and final.finish_reason == "stop"
    assert set(json.loads(final.message.content)) == {"ok"}
    (model,) = oa.models.list().data
    assert model.max_model_len == httpx.get(f"{stack.url}/info").json()["max_total_tokens"]
    plain = oa.completions.create(model="tgi", prompt=PROMPT, max_tokens=5, temperature=0)
    stopped = oa.completions.create(model="tgi", prompt=PROMPT, max_tokens=5, temperature=0, stop="")
    assert stopped.choices[0].text == plain.choices[0].text
    assert stopped.usage.completion_tokens == plain.usage.completion_tokens == 5


# ---- bad requests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"inputs": ""}, 422, "Input validation error: `inputs` cannot be empty"),
        ({"inputs": "x", "parameters": {"max_new_tokens": 0}},
         422, "Input validation error: `max_new_tokens` must be strictly positive"),
        ({"inputs": "x", "parameters": {"top_p": 1.0}},
         422, "Input validation error: `top_p` must be > 0.0 and < 1.0"),
        # past max_total_tokens: TGI checks the total before the prompt alone
        ({"inputs": "x " * 5000}, 422, "Input validation error: `inputs` tokens + `max_new_tokens`"),
    ],
)
def test_bad_generate_requests(stack: Stack, body: dict, status: int, error: str) -> None:
    r = httpx.post(f"{stack.url}/generate", json=body, timeout=60)
    assert r.status_code == status
    assert r.json()["error"].startswith(error) and r.json()["error_type"] == "validation"


def test_bad_stream_request_is_one_error_event_and_server_keeps_serving(stack: Stack) -> None:
    body = {"inputs": "x", "parameters": {"best_of": 2, "do_sample": True}}
    r = httpx.post(f"{stack.url}/generate_stream", json=body, timeout=60)
    assert r.status_code == 200
    assert r.text.strip() == (
        'data:{"error":"Input validation error: `best_of` != 1 is not supported when streaming tokens",'
        '"error_type":"validation"}'
    )
    assert httpx.post(f"{stack.url}/generate", content=b"{oops", headers={"content-type": "application/json"},
                      timeout=60).status_code == 400
    assert httpx.post(f"{stack.url}/generate", content=b"{}", timeout=60).status_code == 415
    assert httpx.get(f"{stack.url}/health", timeout=60).status_code == 200


def test_the_router_process_runs_uvloop_and_httptools(stack: Stack) -> None:
    """The served router (not only router_py.event_loop in a test process) has both libraries loaded and says
    so at start."""
    pid = child_pid(stack.process.proc.pid, "router_py.cli")
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "/uvloop/" in maps and "/httptools/" in maps
    assert "event loop uvloop" in stack.process.log_tail(10**6)
