"""vLLM's sampling fields in the shard: min_p, logit_bias, the min_tokens mask and stop_token_ids, as batched
processors (rows that do not use them are untouched and keep the one-pass greedy path), and end to end through
the servicer on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from proto.generate.v3 import generate_pb2 as pb
from shard.sampling import FinishReason, MinTokens, NextTokenChooser, SamplingParams, StoppingCriteria
from shard.sampling_batch import choose_batch, device_safe
from shard.tests.helpers import Blocks, batch, request, run_to_end, token_ids

VOCAB = 50
EOS = 2


def _logits(rows: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def test_min_p_drops_tokens_below_min_p_times_the_top_probability() -> None:
    logits = _logits(3)
    choosers = [
        NextTokenChooser(SamplingParams(do_sample=True, seed=1, min_p=0.2)),
        NextTokenChooser(SamplingParams(do_sample=True, seed=1)),  # min_p off: every token stays
        NextTokenChooser(SamplingParams(do_sample=True, seed=1, min_p=1.0)),  # only the top token
    ]
    out = choose_batch(choosers, logits, [[1]] * 3)
    probs = torch.softmax(logits, -1)
    kept = torch.isfinite(out[0].logprobs)
    assert torch.equal(kept, probs[0] >= 0.2 * probs[0].max())
    assert 1 < int(kept.sum()) < VOCAB
    assert bool(torch.isfinite(out[1].logprobs).all())
    assert int(torch.isfinite(out[2].logprobs).sum()) == 1 and out[2].token_id == int(logits[2].argmax())
    for _ in range(20):  # every draw is a kept token
        assert kept[choose_batch(choosers[:1], logits[:1], [[1]])[0].token_id]


def test_min_p_leaves_a_greedy_request_alone() -> None:
    """vLLM ignores min_p at temperature 0: a greedy request stays plain greedy (and device-safe)."""
    chooser = NextTokenChooser(SamplingParams(min_p=0.9))
    assert chooser.plain and device_safe([chooser])


def test_logit_bias_changes_the_argmax_of_its_row_only() -> None:
    logits = _logits(3)
    top = logits.argmax(-1).tolist()
    low = [int(logits[0].argmin()), int(logits[1].argmin())]
    choosers = [
        NextTokenChooser(SamplingParams(logit_bias=((low[0], 100.0),))),
        NextTokenChooser(SamplingParams(logit_bias=((top[1], -100.0), (low[1], 0.5)))),
        NextTokenChooser(SamplingParams()),
    ]
    assert not device_safe(choosers[:1])
    out = choose_batch(choosers, logits, [[1]] * 3)
    assert out[0].token_id == low[0]
    assert out[1].token_id == int(logits[1].topk(2).indices[1])  # the runner-up once the top is pushed down
    assert out[2].token_id == top[2]
    biased = logits[0].clone()
    biased[low[0]] += 100.0
    assert out[0].logprob == pytest.approx(float(torch.log_softmax(biased, -1)[low[0]]), abs=1e-5)


def test_min_tokens_masks_eos_and_stop_ids_until_n_tokens_then_gets_out_of_the_way() -> None:
    logits = torch.zeros(1, VOCAB)
    logits[0, EOS], logits[0, 7], logits[0, 5] = 9.0, 8.0, 1.0  # EOS, then stop id 7, then token 5
    prompt = [1, 3, 4]
    chooser = NextTokenChooser(SamplingParams(), MinTokens((EOS, 7), until=len(prompt) + 2))
    assert not chooser.plain
    history = list(prompt)
    for _ in range(2):  # the first two generated tokens can be neither EOS nor 7
        choice = choose_batch([chooser], logits, [history])[0]
        assert choice.token_id == 5 and math.isinf(float(choice.logprobs[EOS]))
        history.append(choice.token_id)
    assert choose_batch([chooser], logits, [history])[0].token_id == EOS
    assert chooser.plain and chooser.min_tokens is None  # back on the one-pass path


def test_min_tokens_yields_to_a_row_with_nothing_else_left() -> None:
    """A grammar that allows only EOS has ended its value: min_tokens does not fail the request over it."""
    logits = torch.full((1, VOCAB), float("-inf"))
    logits[0, EOS] = 0.0
    chooser = NextTokenChooser(SamplingParams(), MinTokens((EOS,), until=10))
    assert choose_batch([chooser], logits, [[1]])[0].token_id == EOS


def test_min_tokens_ignores_stop_ids_beyond_the_vocabulary() -> None:
    """A stop_token_id the model cannot produce (our router passes any id, as vLLM does) has nothing to mask;
    the request was failed before (IndexError in the scatter, a 424 for the client)."""
    logits = _logits(2)
    choosers = [NextTokenChooser(SamplingParams(), MinTokens((EOS, VOCAB + 5), until=10)),
                NextTokenChooser(SamplingParams())]
    out = choose_batch(choosers, logits, [[1], [1]])
    assert not any(isinstance(c, Exception) for c in out), out
    assert math.isinf(float(out[0].logprobs[EOS]))
    assert [c.token_id for c in out] == [int(logits[0].masked_fill(torch.arange(VOCAB) == EOS, -1e9).argmax()),
                                         int(logits[1].argmax())]


def test_stop_token_ids_stop_and_their_text_is_left_out() -> None:
    stop = StoppingCriteria(frozenset({EOS}), 9, stop_token_ids=frozenset({7}))
    assert stop(5, "a") is None and not stop.stop_token_hit
    assert stop(7, "b") == FinishReason.EOS_TOKEN and stop.stop_token_hit
    ignoring = StoppingCriteria(frozenset({EOS}), 9, ignore_eos_token=True, stop_token_ids=frozenset({7}))
    assert ignoring(EOS, "") is None and ignoring(7, "") == FinishReason.EOS_TOKEN
    both = StoppingCriteria(frozenset({EOS}), 9, stop_token_ids=frozenset({EOS}))
    assert both(EOS, "") == FinishReason.EOS_TOKEN and not both.stop_token_hit  # EOS first, as before
    ignored = StoppingCriteria(frozenset({EOS}), 9, ignore_eos_token=True, stop_token_ids=frozenset({EOS}))
    assert ignored(EOS, "") == FinishReason.EOS_TOKEN and ignored.stop_token_hit


def test_stop_sequences_match_only_text_after_min_tokens() -> None:
    stop = StoppingCriteria(frozenset(), 20, stop_sequences=("ab",), min_tokens=2)
    assert stop(1, "a") is None and stop(2, "b") is None  # "ab" within the first two tokens: no stop
    assert stop(3, "a") is None and stop(4, "b") == FinishReason.STOP_SEQUENCE


def test_a_stop_sequence_may_begin_in_the_min_tokens_text_but_must_end_after_it() -> None:
    """vLLM searches each new token's text together with the stop string's length before it, so a stop string
    that ends after the first ``min_tokens`` tokens matches even if it began in them; one wholly inside them
    never matches, also not on a later token whose text is empty (held back, part of a UTF-8 character)."""
    straddling = StoppingCriteria(frozenset(), 20, stop_sequences=("ab",), min_tokens=2)
    assert straddling(1, "x") is None and straddling(2, "a") is None
    assert straddling(3, "b") == FinishReason.STOP_SEQUENCE
    inside = StoppingCriteria(frozenset(), 20, stop_sequences=("ab",), min_tokens=2)
    assert inside(1, "a") is None and inside(2, "b") is None and inside(3, "") is None
    assert inside(4, "c") is None


def test_bad_values_are_refused() -> None:
    for params in ({"min_p": 1.5}, {"min_p": -0.1}, {"logit_bias": ((1, float("nan")),)}):
        with pytest.raises(ValueError):
            SamplingParams(**params)


TEXT = "The cat slept on the warm windowsill"


async def test_logit_bias_stop_token_ids_and_min_tokens_through_the_servicer(llama_service) -> None:
    """Greedy with logit_bias {X: 100}: every token is X. With stop_token_ids [X] and min_tokens 3: X is
    masked for three tokens (the greedy ones without X), the fourth is X and ends the request with EOS_TOKEN;
    X's text is neither in that token's text nor in the generated text."""
    pool, detok = Blocks(), llama_service.runner.detok

    async def run(rid: int, params: pb.NextTokenChooserParameters, stopping: pb.StoppingCriteriaParameters):
        req = request(rid, TEXT, *pool.take(40), parameters=params, stopping=stopping)
        return (await run_to_end(llama_service, pb.PrefillRequest(batch=batch(rid, [req]))))[rid]

    greedy = pb.NextTokenChooserParameters(temperature=1.0, top_p=1.0, typical_p=1.0, repetition_penalty=1.0)
    three = pb.StoppingCriteriaParameters(max_new_tokens=3, ignore_eos_token=True)
    free = token_ids(await run(1, greedy, three))
    assert not any(detok.is_special(t) for t in free)  # so masking EOS does not change them
    x = next(t for t in range(10, 200) if t not in free and not detok.is_special(t) and detok.token_text(t))
    biased = pb.NextTokenChooserParameters()
    biased.CopyFrom(greedy)
    biased.logit_bias[x] = 100.0

    forced = await run(2, biased, pb.StoppingCriteriaParameters(max_new_tokens=4, ignore_eos_token=True))
    assert token_ids(forced) == [x] * 4

    stopping = pb.StoppingCriteriaParameters(max_new_tokens=10, min_tokens=3, stop_token_ids=[x])
    gens = await run(3, biased, stopping)
    assert token_ids(gens) == free + [x]
    done = gens[-1].generated_text
    assert (done.finish_reason, done.generated_tokens) == (pb.FINISH_REASON_EOS_TOKEN, 4)
    assert done.text == detok.text(free)
    assert [t for g in gens for t in g.tokens.texts][-1] == ""
