"""OpenAI-compatible routes (chat, completions, chat_tokenize, models) and the SageMaker/Vertex wrappers."""

from __future__ import annotations

import json

CHAT = {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]}
PROMPT = "<s><|system|>sys</s><|user|>hi</s><|assistant|>"


def openai_events(text: str) -> list[dict]:
    chunks = text[:-2].split("\n\n")
    assert chunks[-1] == "data: [DONE]"
    return [json.loads(c[len("data:") :]) for c in chunks[:-1]]


async def test_chat_completion(client, backend, tokenizer) -> None:
    body = {
        **CHAT,
        "model": "tgi",
        "temperature": 0,
        "presence_penalty": 0.5,
        "top_logprobs": 1,
        "logprobs": True,
        "max_tokens": 2,
        "seed": 3,
    }
    resp = (await client.post("/v1/chat/completions", json=body)).json()
    request = backend.requests[0]
    assert request.inputs == PROMPT and request.add_special_tokens is False
    assert request.input_ids == tuple(tokenizer.encode(PROMPT, add_special_tokens=False))
    assert request.sampling.do_sample is False and request.sampling.repetition_penalty == 2.5
    assert request.top_n_tokens == 1 and request.adapter_id is None and request.stopping.max_new_tokens == 2
    assert resp["object"] == "chat.completion" and resp["model"] == "prism-test"
    assert resp["system_fingerprint"] == "3.3.6-dev0-native" and isinstance(resp["created"], int)
    choice = resp["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    assert len(choice["logprobs"]["content"]) == 2
    assert set(choice["logprobs"]["content"][0]) == {"token", "logprob", "top_logprobs"}
    assert resp["usage"] == {
        "prompt_tokens": request.input_length,
        "completion_tokens": 2,
        "total_tokens": request.input_length + 2,
    }


async def test_chat_eos_maps_to_stop_and_model_to_adapter(client, backend) -> None:
    resp = (await client.post("/v1/chat/completions", json={**CHAT, "model": "my-lora"})).json()
    assert resp["choices"][0]["finish_reason"] == "stop" and resp["choices"][0]["logprobs"] is None
    assert backend.requests[0].adapter_id == "my-lora" and backend.requests[0].sampling.do_sample is True


async def test_chat_stream_with_usage(client) -> None:
    body = {**CHAT, "stream": True, "max_tokens": 3, "stream_options": {"include_usage": True}}
    resp = await client.post("/v1/chat/completions", json=body)
    events = openai_events(resp.text)
    assert [e["object"] for e in events] == ["chat.completion.chunk"] * 4
    assert [e["choices"][0]["finish_reason"] for e in events[:3]] == [None, None, "length"]
    assert all(e["usage"] is None for e in events[:3])
    # NOTE: the role in the first chunk only, as OpenAI and vLLM (openai_chat.StreamRole)
    assert [e["choices"][0]["delta"].get("role") for e in events[:3]] == ["assistant", None, None]
    assert events[3]["choices"] == [] and events[3]["usage"]["completion_tokens"] == 3


async def test_chat_tool_choice_none_renders_tools_without_grammar(client, backend) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    tok = await client.post("/chat_tokenize", json={**CHAT, "tools": tools, "tool_choice": "none"})
    assert '<|tools|>[{"type": "function"' in tok.json()["templated_text"]
    resp = await client.post("/v1/chat/completions", json={**CHAT, "tools": tools, "tool_choice": "none"})
    assert resp.status_code == 422  # the fixture's 64-token limit; what matters: no grammar was attached
    assert "must have less than 64 tokens" in resp.json()["error"]


async def test_completions(client) -> None:
    resp = (await client.post("/v1/completions", json={"prompt": ["hello", "world"], "max_tokens": 2})).json()
    assert resp["object"] == "text_completion"
    assert [(c["index"], c["finish_reason"], c["logprobs"]) for c in resp["choices"]] == [
        (0, "length", None),
        (1, "length", None),
    ]
    assert resp["usage"]["completion_tokens"] == 4


async def test_completions_stream(client) -> None:
    resp = await client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 2, "stream": True})
    events = openai_events(resp.text)
    assert [e["choices"][0]["text"] for e in events] == [" t0", " t304"]
    assert events[-1]["choices"][0]["finish_reason"] == "length"


async def test_chat_tokenize(client, tokenizer) -> None:
    body = (await client.post("/chat_tokenize", json=CHAT)).json()
    assert body["templated_text"] == PROMPT
    assert [t["id"] for t in body["tokenize_response"]] == tokenizer.encode(PROMPT, add_special_tokens=False)


async def test_models(client, config) -> None:
    """TGI's list plus vLLM's ``max_model_len`` (the settled max_total_tokens)."""
    model = {"id": "prism-test", "object": "model", "created": 0, "owned_by": "prism-test"}
    assert (await client.get("/v1/models")).json() == {
        "object": "list",
        "data": [{**model, "max_model_len": config.max_total_tokens}],
    }


async def test_invocations_dispatch_by_shape(client) -> None:
    generate = await client.post("/invocations", json={"inputs": "hello world", "parameters": {}})
    assert generate.json() == [{"generated_text": "hello world t0 t304 t305 t0 t304"}]
    chat = await client.post("/invocations", json=CHAT)
    assert chat.json()["object"] == "chat.completion"
    completion = await client.post("/invocations", json={"prompt": "hello"})
    assert completion.json()["object"] == "text_completion"
    bad = await client.post("/invocations", json={"nothing": 1})
    assert bad.status_code == 422 and "untagged enum SagemakerRequest" in bad.text


async def test_vertex(client) -> None:
    body = {
        "instances": [{"inputs": "hello world"}, {"inputs": "hello", "parameters": {"max_new_tokens": 1}}]
    }
    resp = await client.post("/vertex", json=body)
    assert resp.json() == {"predictions": [" t0 t304 t305 t0 t304", " t0"]}


async def test_vertex_without_instances_is_a_validation_error(client, backend) -> None:
    """TGI's check: at least one instance, else 422 with its two-field text; nothing reaches the backend."""
    resp = await client.post("/vertex", json={"instances": []})
    assert resp.status_code == 422
    assert resp.json() == {"error": "Input validation error", "error_type": "Input validation error"}
    assert backend.requests == []


async def test_ignore_eos_reaches_the_stopping_criteria(client, backend) -> None:
    """vLLM's `ignore_eos` extension on both routes: generate past EOS up to max_tokens; off by default."""
    await client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 2, "ignore_eos": True})
    await client.post("/v1/chat/completions", json={**CHAT, "ignore_eos": True})
    await client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 2})
    assert [r.stopping.ignore_eos_token for r in backend.requests] == [True, True, False]
    resp = await client.post("/v1/completions", json={"prompt": "hello", "ignore_eos": "yes"})
    assert resp.status_code == 422 and "invalid type" in resp.text  # serde's plain-text rejection, as TGI
