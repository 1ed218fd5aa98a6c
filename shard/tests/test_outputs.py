"""What a Generation carries, per TGI: prefill tokens, top tokens, generated text, seed only when sampled."""

from __future__ import annotations

import math

from proto.generate.v3 import generate_pb2 as pb
from shard.tests.helpers import Blocks, batch, request, run_to_end, token_ids

TEXT = "The cat slept on the warm windowsill"


def _sampled(seed: int) -> pb.NextTokenChooserParameters:
    return pb.NextTokenChooserParameters(
        temperature=0.8,
        top_k=50,
        top_p=0.95,
        typical_p=1.0,
        do_sample=True,
        seed=seed,
        repetition_penalty=1.1,
        frequency_penalty=0.2,
    )


async def test_prefill_and_top_tokens_shape(llama_service) -> None:
    req = request(1, TEXT, *Blocks().take(40), max_new=3, prefill_logprobs=True, top_n_tokens=4)
    gens = (await run_to_end(llama_service, pb.PrefillRequest(batch=batch(1, [req]))))[1]
    prefill = gens[0].prefill_tokens
    assert prefill.ids[0] == 0 and len(prefill.ids) == len(prefill.logprobs) == len(prefill.texts)
    assert math.isnan(prefill.logprobs[0]) and all(lp <= 0 for lp in prefill.logprobs[1:])
    assert list(prefill.is_special) == [True] + [False] * (len(prefill.ids) - 1) and prefill.texts[0] == "<s>"
    assert all(not g.HasField("prefill_tokens") for g in gens[1:])  # only on the first emission
    ranks = list(gens[0].prefill_ranks)  # each prompt token's rank by logprob (none for the first)
    assert len(ranks) == len(prefill.ids) and ranks[0] == 0 and all(r >= 1 for r in ranks[1:])
    tops = gens[0].prefill_top_tokens  # each prompt position's 4 likeliest (none for the first)
    assert len(tops) == len(prefill.ids) and list(tops[0].ids) == []
    for top, token, own, rank in zip(tops[1:], prefill.ids[1:], prefill.logprobs[1:], ranks[1:]):
        assert len(top.ids) == len(top.is_special) == 4 and list(top.logprobs) == sorted(top.logprobs, reverse=True)
        if token in top.ids:  # the same number as the token's own logprob, at its rank
            assert top.logprobs[list(top.ids).index(token)] == own and top.ids[rank - 1] == token
        else:  # less likely than the 4th
            assert own <= top.logprobs[-1] and rank > 4
    assert all(len(g.prefill_top_tokens) == 0 for g in gens[1:])
    for g in gens:
        assert len(g.top_tokens) == len(g.tokens.ids)  # one per token (an answer may carry several)
        for top, chosen in zip(g.top_tokens, g.tokens.ids):
            assert len(top.ids) == 4 and list(top.logprobs) == sorted(top.logprobs, reverse=True)
            assert top.ids[0] == chosen  # greedy: the chosen token is the most likely one
            assert len(top.is_special) == 4
    done = gens[-1].generated_text
    assert done.generated_tokens == 3 and not done.HasField("seed")
    detok = llama_service.runner.detok
    assert done.text == detok.text(token_ids(gens)) == "".join(t for g in gens for t in g.tokens.texts)


async def test_same_seed_same_tokens_in_any_batch(llama_service) -> None:
    pool = Blocks()
    alone = await run_to_end(
        llama_service,
        pb.PrefillRequest(
            batch=batch(1, [request(1, TEXT, *pool.take(40), max_new=8, parameters=_sampled(42))])
        ),
    )
    mixed = await run_to_end(
        llama_service,
        pb.PrefillRequest(
            batch=batch(
                2,
                [
                    request(2, "Hello there", *pool.take(40), max_new=8, parameters=_sampled(7)),
                    request(3, TEXT, *pool.take(40), max_new=8, parameters=_sampled(42)),
                ],
            )
        ),
    )
    assert token_ids(alone[1]) == token_ids(mixed[3])
    assert token_ids(mixed[2]) != token_ids(mixed[3])
    assert alone[1][-1].generated_text.seed == 42


async def test_stop_sequence_ends_the_request(llama_service) -> None:
    pool = Blocks()
    free = await run_to_end(
        llama_service, pb.PrefillRequest(batch=batch(1, [request(1, TEXT, *pool.take(40), max_new=6)]))
    )
    texts = [t for g in free[1] for t in g.tokens.texts]
    stop_at = next(i for i, t in enumerate(texts) if i >= 1 and t)
    stop = "".join(texts[: stop_at + 1])[-3:]
    stopping = pb.StoppingCriteriaParameters(max_new_tokens=6, stop_sequences=[stop])
    gens = (
        await run_to_end(
            llama_service,
            pb.PrefillRequest(batch=batch(2, [request(2, TEXT, *pool.take(40), stopping=stopping)])),
        )
    )[2]
    assert gens[-1].generated_text.finish_reason == pb.FINISH_REASON_STOP_SEQUENCE
    assert gens[-1].generated_text.text.endswith(stop) and len(gens) <= stop_at + 1


async def test_the_routers_input_ids_are_used_as_given(llama_service) -> None:
    """Our router sends its token ids (``input_ids``): the shard does not tokenize ``inputs`` again. Same ids as
    the text's own tokenization -> the same output; ids beside an unrelated text -> the ids win; truncate keeps
    the last ids as tokenizing would."""
    pool = Blocks()
    ids = llama_service.runner.detok.encode(TEXT, True, 0)

    async def tokens(text: str, **extra) -> tuple[list[int], list[int]]:
        req = request(pool.next_block, text, *pool.take(40), max_new=4, prefill_logprobs=True, **extra)
        gens = (await run_to_end(llama_service, pb.PrefillRequest(batch=batch(req.id, [req]))))[req.id]
        return list(gens[0].prefill_tokens.ids), token_ids(gens)

    plain = await tokens(TEXT)
    assert plain[0] == ids
    assert await tokens(TEXT, input_ids=ids) == plain
    assert await tokens("something else entirely", input_ids=ids) == plain
    cut = await tokens("x", input_ids=[5, 6] + ids[-6:], truncate=6)
    assert cut[0] == ids[-6:]
