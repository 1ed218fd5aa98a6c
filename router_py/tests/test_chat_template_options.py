"""vLLM's chat template fields on ``/v1/chat/completions`` (and ``/chat_tokenize``): ``chat_template_kwargs``
reach the template, ``add_generation_prompt`` and ``continue_final_message`` shape the prompt's end, and what
would be ambiguous or is not served is a 422 naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from router_py.chat_template import ChatTemplate, ChatTemplateError
from router_py.http.server import create_app
from router_py.metrics import Metrics
from router_py.router_config import RouterConfig
from router_py.tests.conftest import CHAT_TEMPLATE, FakeBackend, build_model_dir
from router_py.tokenizer import Tokenizer

THINKING = CHAT_TEMPLATE + "{% if enable_thinking is defined and not enable_thinking %}/no_think{% endif %}"
TURNS = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "Sure, here"}]


def test_extra_variables_reach_the_template_and_a_final_message_is_left_open() -> None:
    template = ChatTemplate(THINKING, "<s>", "</s>")
    assert template.render(TURNS[:1], extra={"enable_thinking": False}).endswith("<|assistant|>/no_think")
    assert not template.render(TURNS[:1]).endswith("/no_think")
    assert template.render(TURNS, add_generation_prompt=False, continue_final=True) == (
        "<s><|user|>hello</s><|assistant|>Sure, here"
    )
    with pytest.raises(ChatTemplateError, match="continue_final_message"):
        ChatTemplate("{{ 'no messages here' }}", None, None).render(TURNS, continue_final=True)


@pytest.fixture
async def client(tmp_path: Path) -> httpx.AsyncClient:
    root = build_model_dir(tmp_path / "model")
    config = json.loads((root / "tokenizer_config.json").read_text())
    (root / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": THINKING}))
    cfg = RouterConfig(model_id="prism-test", max_input_tokens=64, max_total_tokens=128)
    app = create_app(FakeBackend(), Tokenizer.from_model_dir(root), cfg, Metrics(64, 128))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as c:
        yield c


async def _templated(client: httpx.AsyncClient, **fields) -> httpx.Response:
    return await client.post("/chat_tokenize", json={"messages": TURNS, **fields})


async def test_the_fields_shape_the_templated_prompt(client) -> None:
    plain = (await _templated(client)).json()["templated_text"]
    assert plain.endswith("Sure, here</s><|assistant|>")
    no_think = (await _templated(client, chat_template_kwargs={"enable_thinking": False})).json()
    assert no_think["templated_text"] == plain + "/no_think"
    no_prompt = (await _templated(client, add_generation_prompt=False)).json()["templated_text"]
    assert no_prompt == plain.removesuffix("<|assistant|>")
    continued = (await _templated(client, continue_final_message=True)).json()["templated_text"]
    assert continued == plain.removesuffix("</s><|assistant|>")
    r = await client.post("/v1/chat/completions", json={"messages": TURNS, "continue_final_message": True,
                                                       "max_tokens": 2})
    assert r.status_code == 200


@pytest.mark.parametrize("fields,words", [
    ({"chat_template": "{{ 'x' }}"}, "`chat_template` is not supported"),
    ({"chat_template_kwargs": {"messages": [], "tools": 1}}, "`chat_template_kwargs` cannot set messages, tools"),
    ({"continue_final_message": True, "add_generation_prompt": True}, "cannot both be true"),
])
async def test_ambiguous_or_unserved_fields_are_a_clear_422(client, fields, words) -> None:
    for path in ("/chat_tokenize", "/v1/chat/completions"):
        r = await client.post(path, json={"messages": TURNS, **fields})
        assert r.status_code == 422 and words in r.json()["error"], r.text
