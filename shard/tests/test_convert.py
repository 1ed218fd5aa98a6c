"""Answer building: the in-place path gives byte-for-byte the messages built one by one (the former form)."""

from __future__ import annotations

from proto.generate.v3 import generate_pb2 as pb
from shard import convert
from shard.generation import FinishedText, GenerationOut, TokensOut
from shard.sampling import FinishReason


def _generations() -> list[GenerationOut]:
    plain = GenerationOut(1, TokensOut([17], [-0.25], [" the"], [False]))
    failed = GenerationOut(2, TokensOut(), error="SamplingError: no valid next token")
    prefill = GenerationOut(3, TokensOut([5], [-1.5], ["é"], [True]),
                            prefill_tokens=TokensOut([0, 9], [float("nan"), -2.0], ["<s>", "a"], []))
    top = GenerationOut(4, TokensOut([8], [-0.1], [""], [False]),
                        top_tokens=[TokensOut([8, 2], [-0.1, -2.4], ["x", "y"], [False, True])])
    finished = [
        GenerationOut(5 + i, TokensOut([1], [0.0], ["</s>"], [True]),
                      finished=FinishedText(text, n, reason, seed))
        for i, (text, n, reason, seed) in enumerate([("hi", 3, FinishReason.EOS_TOKEN, None),
                                                     ("", 1, FinishReason.LENGTH, 0),
                                                     ("a b", 2, FinishReason.STOP_SEQUENCE, 2**63)])
    ]
    return [plain, failed, prefill, top, *finished]


def _tokens(t: TokensOut) -> pb.Tokens:
    return pb.Tokens(ids=t.ids, logprobs=t.logprobs, texts=t.texts, is_special=t.is_special)


def _reference(g: GenerationOut) -> pb.Generation:
    out = pb.Generation(
        request_id=g.request_id, tokens=_tokens(g.tokens), top_tokens=[_tokens(t) for t in g.top_tokens]
    )
    if g.error is not None:
        out.error = g.error
    if g.prefill_tokens is not None:
        out.prefill_tokens.CopyFrom(_tokens(g.prefill_tokens))
    if g.finished is not None:
        f = g.finished
        out.generated_text.CopyFrom(pb.GeneratedText(
            text=f.text, generated_tokens=f.generated_tokens, finish_reason=int(f.finish_reason), seed=f.seed
        ))
    return out


def test_generations_built_in_place_are_the_same_bytes() -> None:
    gens = _generations()
    expected = pb.DecodeResponse(generations=[_reference(g) for g in gens], forward_ns=7)
    got = pb.DecodeResponse(forward_ns=7)
    convert.add_generations(got.generations, gens)
    assert got.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)
    assert got == expected
