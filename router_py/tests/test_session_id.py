"""The session a request names (x-session-id header, OpenAI ``user``) reaches the scheduler's request, where
DART's session return keys on it (prism_cache.session_return); without one it is None."""

from __future__ import annotations

from router_py.backend_api import ChooserParams, StoppingParams, ValidRequest
from router_py.scheduling.interface import SchedRequest

GENERATE = {"inputs": "hello world", "parameters": {"max_new_tokens": 2}}
CHAT = {"model": "tgi", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def test_every_route_carries_the_named_session(client, backend) -> None:
    calls = [
        ("/generate", GENERATE, {"x-session-id": "chat-1"}),
        ("/generate_stream", GENERATE, {"x-session-id": "chat-2"}),
        ("/v1/chat/completions", {**CHAT, "user": "alice"}, {}),
        ("/v1/completions", {"model": "tgi", "prompt": "hello", "max_tokens": 2, "user": "bob"}, {}),
        ("/v1/chat/completions", {**CHAT, "user": "alice"}, {"x-session-id": "chat-3"}),  # the header wins
        ("/generate", GENERATE, {}),
        ("/generate", GENERATE, {"x-session-id": "x" * 1000}),
        ("/vertex", {"instances": [GENERATE]}, {"x-session-id": "chat-4"}),
        ("/", GENERATE, {"x-session-id": "chat-5"}),
    ]
    for path, body, headers in calls:
        resp = await client.post(path, json=body, headers=headers)
        assert resp.status_code == 200, resp.text
    sessions = [r.session for r in backend.requests]
    assert sessions == ["chat-1", "chat-2", "alice", "bob", "chat-3", None, "x" * 256, "chat-4", "chat-5"]


async def test_a_completions_call_with_several_prompts_names_no_session(client, backend) -> None:
    """Its prompts are separate conversations: one session would count prompts 2..n as that session's returns."""
    body = {"model": "tgi", "prompt": ["hello", "world"], "max_tokens": 2, "user": "bob"}
    resp = await client.post("/v1/completions", json=body)
    assert resp.status_code == 200, resp.text
    assert [r.session for r in backend.requests] == [None, None]


async def test_a_vertex_call_with_several_instances_names_no_session(client, backend) -> None:
    resp = await client.post("/vertex", json={"instances": [GENERATE, GENERATE]}, headers={"x-session-id": "c"})
    assert resp.status_code == 200, resp.text
    assert [r.session for r in backend.requests] == [None, None]


def test_the_batcher_request_type_and_the_scheduler_request_both_default_to_no_session() -> None:
    valid = ValidRequest("a", (1,), 1, ChooserParams(), StoppingParams(max_new_tokens=1))
    assert valid.session is None and SchedRequest(0, (1,), 1, 0.0).session is None
