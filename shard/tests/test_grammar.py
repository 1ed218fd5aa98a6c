"""Constrained decoding in the shard: with random weights only the mask makes the output valid, so every
output must fully match its regex / validate against its schema, end with EOS only where the grammar accepts,
and leave
the other requests of the batch exactly as they were."""

from __future__ import annotations

import json
import math
import re

import jsonschema
import pytest

from proto.generate.v3 import generate_pb2 as pb
from shard import grammar
from shard.tests.helpers import Blocks, batch, request, run_to_end, token_ids

TEXT = "The cat slept on the warm windowsill"
REGEX = r"(yes|no|maybe) [0-9]{2,4}"
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"enum": ["get_weather", "book_hotel"]},
        "arguments": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
                "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
            },
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "arguments"],
    "additionalProperties": False,
}


def _params(kind: int, text: str, seed: int | None) -> pb.NextTokenChooserParameters:
    sampled = seed is not None
    return pb.NextTokenChooserParameters(
        temperature=1.0,
        top_p=1.0,
        typical_p=1.0,
        repetition_penalty=1.0,
        do_sample=sampled,
        seed=seed or 0,
        grammar=text,
        grammar_type=kind,
    )


def _grammar_request(rid: int, pool: Blocks, kind: int, text: str, seed: int | None, max_new: int = 120):
    stopping = pb.StoppingCriteriaParameters(max_new_tokens=max_new)
    return request(
        rid, TEXT, *pool.take(max_new + 16), parameters=_params(kind, text, seed), stopping=stopping
    )


def _until_finished(gens: list[pb.Generation]) -> pb.GeneratedText:
    """The request's GeneratedText (it may keep generating after it finished, until the router filters)."""
    return next(g.generated_text for g in gens if g.HasField("generated_text"))


@pytest.mark.parametrize("seed", [None, 1, 2, 3])
async def test_regex_output_always_matches(llama_service, seed) -> None:
    pool = Blocks()
    reqs = [
        _grammar_request(i, pool, pb.GRAMMAR_TYPE_REGEX, REGEX, seed if seed is None else seed + i)
        for i in range(4)
    ]
    out = await run_to_end(llama_service, pb.PrefillRequest(batch=batch(1, reqs)))
    for rid in range(4):
        done = _until_finished(out[rid])
        assert done.finish_reason == pb.FINISH_REASON_EOS_TOKEN, done
        assert re.fullmatch(REGEX, done.text), done.text


async def test_json_schema_output_always_validates_next_to_free_requests(llama_service) -> None:
    """Grammar and free requests in one batch: the free one's tokens are those it gets alone (same seed)."""
    free_params = pb.NextTokenChooserParameters(
        temperature=0.9, top_p=1.0, typical_p=1.0, repetition_penalty=1.0, do_sample=True, seed=99
    )
    alone = await run_to_end(
        llama_service,
        pb.PrefillRequest(
            batch=batch(
                1,
                [
                    request(
                        50,
                        "Hello there",
                        *Blocks(next_block=100).take(40),
                        max_new=12,
                        parameters=free_params,
                    )
                ],
            )
        ),
    )
    pool = Blocks()
    schema = json.dumps(SCHEMA)
    reqs = [_grammar_request(i, pool, pb.GRAMMAR_TYPE_JSON, schema, seed=10 + i) for i in range(6)]
    reqs.insert(
        3, request(50, "Hello there", *Blocks(next_block=100).take(40), max_new=12, parameters=free_params)
    )
    prefill = pb.PrefillRequest(batch=batch(2, reqs))
    out = await run_to_end(llama_service, prefill, 300, filter_finished=True)
    for rid in range(6):
        done = _until_finished(out[rid])
        assert done.finish_reason == pb.FINISH_REASON_EOS_TOKEN, done
        jsonschema.validate(json.loads(done.text), SCHEMA)
    assert token_ids(out[50]) == token_ids(alone[50])


async def test_compiled_grammars_are_cached_and_mask_modes_change_nothing(llama_service, monkeypatch) -> None:
    """Prefetched or inline, parallel or sequential masks: the same tokens."""
    schema = json.dumps(SCHEMA)
    runs = []
    for prefetch, parallel in [(True, True), (False, False), (True, False), (False, True)]:
        masks = llama_service.grammars.masks
        monkeypatch.setattr(masks, "prefetch", prefetch)
        monkeypatch.setattr(masks, "parallel", parallel)
        pool = Blocks()
        reqs = [_grammar_request(i, pool, pb.GRAMMAR_TYPE_JSON, schema, seed=5 + i) for i in range(3)]
        out = await run_to_end(llama_service, pb.PrefillRequest(batch=batch(1, reqs)))
        runs.append({rid: token_ids(gens) for rid, gens in out.items()})
    assert runs[0] == runs[1] == runs[2] == runs[3]
    assert llama_service.grammars.compiles == 1


def test_bitmask_applies_bit_order_and_vocab_tail() -> None:
    import torch

    logits = torch.zeros(2, 40)
    bitmask = torch.tensor([[0b101, 0], [0, 1 << 3]], dtype=torch.int32)  # row 0: tokens 0, 2; row 1: 35
    grammar.apply_bitmask(logits, bitmask)
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [0, 2]
    assert torch.isfinite(logits[1]).nonzero().flatten().tolist() == [35]


def test_bad_grammars_raise_grammar_error(llama_service) -> None:
    compiler = llama_service.grammars
    for kind, text in [
        (pb.GRAMMAR_TYPE_JSON, "{not json"),
        (pb.GRAMMAR_TYPE_JSON, "[1]"),
        (pb.GRAMMAR_TYPE_JSON, '{"type": "object", "not": {}}'),
        (pb.GRAMMAR_TYPE_REGEX, "(unclosed"),
        (7, "x"),
    ]:
        with pytest.raises(grammar.GrammarError):
            compiler.state(kind, text)


def test_a_matcher_in_error_can_only_end(llama_service) -> None:
    """If a matcher ever refused a token (it cannot when its mask is obeyed), its row allows only EOS, so the
    request ends instead of sampling from an all -inf row (NaN) and failing the batch."""
    import torch

    from shard.batch import RequestState
    from shard.model_runner import StepLogits

    state = llama_service.grammars.state(pb.GRAMMAR_TYPE_REGEX, "abc")
    state.matcher.consume_token(1)  # EOS at the start: not accepted, the matcher enters its error state
    assert state.matcher.is_error()
    r = RequestState(0, [5, 6], 2, [1], [16, 17], 1, None, None, grammar=state)
    logits = StepLogits(torch.zeros(1, 1024), {0: 0})
    grammar.apply_masks([r], [0, 1], logits)
    assert torch.isfinite(logits.values[0]).nonzero().flatten().tolist() == [1]


def _neighbour() -> pb.Request:
    """The other request of a batch whose grammar request goes wrong: sampled with a seed, 6 tokens, so it must
    generate exactly what it generates alone."""
    free = pb.NextTokenChooserParameters(
        temperature=0.9, top_p=1.0, typical_p=1.0, repetition_penalty=1.0, do_sample=True, seed=3
    )
    return request(7, TEXT, *Blocks(next_block=100).take(40), max_new=6, parameters=free)


async def test_a_grammar_that_does_not_compile_ends_only_its_request(llama_service) -> None:
    """As TGI's router may send one (ours refuses it first): that request ends at once with EOS and no text;
    the batch's other request generates exactly what it generates alone."""
    alone = await run_to_end(llama_service, pb.PrefillRequest(batch=batch(1, [_neighbour()])))
    bad = '{"type": "array", "items": {"type": "integer"}, "uniqueItems": true}'
    reqs = [
        _grammar_request(1, Blocks(), pb.GRAMMAR_TYPE_JSON, bad, seed=1),
        _neighbour(),
    ]
    prefill = pb.PrefillRequest(batch=batch(2, reqs))
    out = await run_to_end(llama_service, prefill, 300, filter_finished=True)
    done = _until_finished(out[1])
    assert (done.text, done.generated_tokens, done.finish_reason) == ("", 1, pb.FINISH_REASON_EOS_TOKEN)
    assert token_ids(out[7]) == token_ids(alone[7])


# required and recursive without a base case: no document satisfies it, and llguidance finds out only while
# generating (its parser runs out of items after the first `{`), so the router's compile check accepts it
ENDLESS = {
    "$defs": {"A": {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}, "required": ["a"]}},
    "type": "object",
    "properties": {"a": {"$ref": "#/$defs/A"}},
    "required": ["a"],
}


async def test_a_grammar_that_fails_while_generating_fails_its_request_not_finishes_it(llama_service) -> None:
    """A matcher that enters its error state mid-output (a parser limit, an unsatisfiable schema) would only
    end with EOS: that request then fails alone with the engine's message (Generation.error), never finishes
    as ``eos_token`` with an invalid document; the batch's other request generates what it does alone."""
    alone = await run_to_end(llama_service, pb.PrefillRequest(batch=batch(1, [_neighbour()])))
    reqs = [
        _grammar_request(1, Blocks(), pb.GRAMMAR_TYPE_JSON, json.dumps(ENDLESS), seed=1),
        _neighbour(),
    ]
    out = await run_to_end(llama_service, pb.PrefillRequest(batch=batch(2, reqs)), 300, filter_finished=True)
    assert not any(g.HasField("generated_text") for g in out[1])
    assert "grammar" in out[1][-1].error and "Too many items" in out[1][-1].error
    assert token_ids(out[7]) == token_ids(alone[7])


def test_no_special_token_but_eos_is_ever_allowed(llama_service) -> None:
    """BOS and PAD (special, matching no grammar bytes) are never allowed; only EOS is, where accepted."""
    import torch

    from shard.batch import RequestState
    from shard.model_runner import StepLogits

    state = llama_service.grammars.state(pb.GRAMMAR_TYPE_JSON, json.dumps(SCHEMA))
    r = RequestState(0, [5, 6], 2, [1], [16, 17], 1, None, None, grammar=state)
    logits = StepLogits(torch.zeros(1, 1024), {0: 0})
    grammar.apply_masks([r], [0, 1], logits)
    allowed = torch.isfinite(logits.values[0]).nonzero().flatten().tolist()
    assert allowed and 0 not in allowed and 2 not in allowed


async def test_top_tokens_leave_out_what_the_grammar_rules_out(llama_service) -> None:
    """With at most two tokens allowed per step, asking for 5 top tokens lists only allowed ones: a ruled-out
    token has logprob -inf, which is no candidate and no JSON number (the router's 500 before)."""
    pool = Blocks()
    stopping = pb.StoppingCriteriaParameters(max_new_tokens=20)
    req = request(0, TEXT, *pool.take(40), parameters=_params(pb.GRAMMAR_TYPE_REGEX, "(yes|no)", None),
                  stopping=stopping, top_n_tokens=5)
    out = await run_to_end(llama_service, pb.PrefillRequest(batch=batch(1, [req])))
    tops = [g.top_tokens[0] for g in out[0] if g.top_tokens]
    assert tops and all(0 < len(t.ids) < 5 for t in tops)
    assert all(math.isfinite(lp) for t in tops for lp in t.logprobs)
    assert re.fullmatch("(yes|no)", _until_finished(out[0]).text)
