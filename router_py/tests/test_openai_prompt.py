"""The four shapes of ``/v1/completions``'s ``prompt`` (router_py.http.openai_prompt) and the 422s of the
wrong ones; ``stream_options`` (router_py.http.openai_usage). Before, a token-id prompt was the deserializer's
text/plain 422."""

from __future__ import annotations

import pytest

from router_py.http.errors import FrameworkError, HttpError
from router_py.http.openai_prompt import SHAPES, Prompt, parse_prompts
from router_py.http.openai_usage import StreamUsage, parse_stream_options

VOCAB = 100


@pytest.mark.parametrize("raw,expected", [
    ("hi", [Prompt(text="hi")]),
    (["a", "b"], [Prompt(text="a"), Prompt(text="b")]),
    ([1, 2, 3], [Prompt(ids=(1, 2, 3))]),
    ([0, 99], [Prompt(ids=(0, 99))]),
    ([[1, 2], [3]], [Prompt(ids=(1, 2)), Prompt(ids=(3,))]),
])
def test_the_four_shapes(raw, expected) -> None:
    assert parse_prompts(raw, VOCAB) == expected


@pytest.mark.parametrize("raw,message", [
    ([], f"`prompt` cannot be empty: give {SHAPES}"),
    ([[]], "`prompt[0]` cannot be empty: a token-id prompt needs at least one id"),
    ([[1], []], "`prompt[1]` cannot be empty: a token-id prompt needs at least one id"),
    ([1, -1], "`prompt` token id -1 is out of the vocabulary (size 100)"),
    ([1, 100], "`prompt` token id 100 is out of the vocabulary (size 100)"),
    ([[1], [2, 100]], "`prompt[1]` token id 100 is out of the vocabulary (size 100)"),
    (["a", 1], f"`prompt` mixes strings and token ids: give {SHAPES}"),
    (["a", [1]], f"`prompt` mixes strings and token-id lists: give {SHAPES}"),
    ([1, [2]], f"`prompt` mixes token ids and token-id lists: give {SHAPES}"),
    ([[[1]]], "`prompt[0][0]` is nested too deep: a token-id prompt is a list of ids"),
    ([[1, [2]]], "`prompt[0][1]` is nested too deep: a token-id prompt is a list of ids"),
    ([[1, "a"]], '`prompt[0][1]` must be a token id. Given: string "a"'),
    ([1, 2.0], "`prompt[1]` must be a string, a token id or a list of token ids. Given: floating point "
               "`2.0`"),
    ([True], "`prompt[0]` must be a string, a token id or a list of token ids. Given: boolean `true`"),
    (["a", None], "`prompt[1]` must be a string, a token id or a list of token ids. Given: null"),
])
def test_wrong_lists_are_tgis_validation_422(raw, message) -> None:
    with pytest.raises(HttpError) as err:
        parse_prompts(raw, VOCAB)
    assert (err.value.status, err.value.error_type) == (422, "validation")
    assert err.value.body() == {"error": f"Input validation error: {message}", "error_type": "validation"}


@pytest.mark.parametrize("raw", [5, None, {"a": 1}, True])
def test_a_prompt_that_is_no_list_stays_the_deserializers_422(raw) -> None:
    with pytest.raises(FrameworkError) as err:
        parse_prompts(raw, VOCAB)
    assert err.value.status == 422 and "untagged enum Prompt" in err.value.text


def test_without_a_vocabulary_only_negative_ids_are_refused() -> None:
    assert parse_prompts([10**6], None) == [Prompt(ids=(10**6,))]
    with pytest.raises(HttpError):
        parse_prompts([-3], None)


@pytest.mark.parametrize("options,expected", [
    (None, StreamUsage()),
    ("yes", StreamUsage()),
    ({"include_usage": True}, StreamUsage(final=True)),
    ({"include_usage": True, "continuous_usage_stats": True}, StreamUsage(final=True, continuous=True)),
    # NOTE: vLLM's should_include_usage: continuous usage only with include_usage
    ({"continuous_usage_stats": True}, StreamUsage()),
    ({"include_usage": False, "continuous_usage_stats": True}, StreamUsage()),
])
def test_stream_options(options, expected) -> None:
    assert parse_stream_options({"stream_options": options}) == expected
