"""SSE framing helpers: TGI's ``data:{json}`` events and the per-stream chunk template (the keep-alive and
the stream's lifetime: test_sse_keepalive.py)."""

from __future__ import annotations


import pytest

from router_py.http.sse import OPENAI_DONE, TgiEventTemplate, tgi_event


def test_event_framing() -> None:
    assert tgi_event({"a": "é", "b": None}) == 'data:{"a":"é","b":null}\n\n'
    assert OPENAI_DONE == "data: [DONE]\n\n"


@pytest.mark.parametrize("text", ["", " guxilath", 'quote " back \\ slash', "é ü 中文 😀", "\x00\x15\x0c\n\t",
                                  "\u2028\ud800", "\x00prism-probe\x00"])
def test_event_template_renders_as_the_plain_event(text: str) -> None:
    def chunk(t: str) -> dict:
        return {"object": "text_completion", "model": "m/é", "choices": [{"index": 1, "text": t, "x": None}]}

    assert TgiEventTemplate(chunk).render(text) == tgi_event(chunk(text))
    # a probe that shows twice in the template: the plain rendering, still identical
    twice = TgiEventTemplate(lambda t: {"a": TgiEventTemplate._PROBE, "text": t})
    assert twice.render(text) == tgi_event({"a": TgiEventTemplate._PROBE, "text": text})
