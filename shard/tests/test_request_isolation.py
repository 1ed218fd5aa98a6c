"""Issue 16 item 2, shard side: every sampling value validation accepts gives finite numbers, and one
request's failure ends only that request (the others keep generating, their batch and KV untouched)."""

from __future__ import annotations

import math

import pytest
import torch

from proto.generate.v3 import generate_pb2 as pb
from shard.sampling import NextTokenChooser, SamplingParams
from shard.sampling_batch import choose_batch
from shard.server import TextGenerationService
from shard.tests.helpers import Blocks, batch, request, run_to_end, token_ids

TEXT = "The library opens at nine and closes at six."
EXTREME = [
    SamplingParams(temperature=1e-45),
    SamplingParams(temperature=1e-45, do_sample=True, seed=3),
    SamplingParams(repetition_penalty=1e-45),
    SamplingParams(repetition_penalty=1e-45, do_sample=True, seed=4),
    SamplingParams(repetition_penalty=1e38, temperature=1e38, top_p=1e-9, do_sample=True),
    SamplingParams(temperature=1e-45, top_k=1, top_p=1e-45, typical_p=1e-45, frequency_penalty=2.0),
]


@pytest.mark.parametrize("params", EXTREME, ids=lambda p: repr(p)[:80])
def test_extreme_accepted_values_give_a_finite_choice(params: SamplingParams) -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 30
    choosers = [NextTokenChooser(params) for _ in range(3)]
    history = [[1, 2, 3, int(logits[i].argmax())] for i in range(3)]
    for _ in range(3):
        for choice in choose_batch(choosers, logits, history):
            assert not isinstance(choice, Exception), choice
            assert math.isfinite(choice.logprob) and 0 <= choice.token_id < 50


def test_tiny_temperature_is_greedy() -> None:
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1))
    choosers = [NextTokenChooser(SamplingParams(temperature=1e-45, seed=s)) for s in range(4)]
    got = [c.token_id for c in choose_batch(choosers, logits, [[0]] * 4)]
    assert got == logits.argmax(-1).tolist()


def test_a_nan_row_fails_alone() -> None:
    logits = torch.randn(3, 50)
    logits[1] = float("nan")
    choosers = [NextTokenChooser(SamplingParams(do_sample=True, seed=i)) for i in range(3)]
    out = choose_batch(choosers, logits, [[0]] * 3)
    assert isinstance(out[1], Exception)
    assert not isinstance(out[0], Exception) and not isinstance(out[2], Exception)


def test_seeded_sampling_ignores_the_batch_around_it() -> None:
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(2)) * 2

    def draw(rows: list[int]) -> list[int]:
        choosers = [NextTokenChooser(SamplingParams(do_sample=True, seed=11, top_k=20)) for _ in rows]
        return [c.token_id for c in choose_batch(choosers, logits[rows], [[0]] * len(rows))]

    alone = draw([2])[0]
    assert draw([0, 1, 2, 3])[2] == alone and draw([2, 2])[1] == alone


def _params(**kw: object) -> pb.NextTokenChooserParameters:
    base = dict(temperature=1.0, top_p=1.0, typical_p=1.0, repetition_penalty=1.0)
    base.update(kw)
    return pb.NextTokenChooserParameters(**base)


async def test_poisoned_parameters_do_not_hurt_the_batch(llama_service: TextGenerationService) -> None:
    """temperature 1e-45 and repetition_penalty 1e-45 (with sampling) next to plain greedy requests: all
    finish, the greedy ones with the tokens they get alone."""
    blocks = Blocks()
    alone = await run_to_end(
        llama_service, pb.PrefillRequest(batch=batch(0, [request(0, TEXT, *blocks.take(40))]))
    )
    reqs = [
        request(1, TEXT, *blocks.take(40)),
        request(2, TEXT, *blocks.take(40), parameters=_params(temperature=1e-45, do_sample=True)),
        request(3, TEXT, *blocks.take(40), parameters=_params(repetition_penalty=1e-45, do_sample=True)),
        request(4, TEXT, *blocks.take(40)),
    ]
    got = await run_to_end(llama_service, pb.PrefillRequest(batch=batch(1, reqs)))
    assert all(not g.HasField("error") for gs in got.values() for g in gs)
    assert all(len(token_ids(got[i])) == 8 for i in (1, 2, 3, 4))
    assert token_ids(got[1]) == token_ids(got[4]) == token_ids(alone[0])


async def test_one_failing_request_leaves_the_others_running(
    llama_service: TextGenerationService, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NOTE: no step run ahead (shard.lookahead): it could call the victim's stop check before it is patched
    llama_service.lookahead.depth = 0
    blocks = Blocks()
    reqs = [request(i, TEXT, *blocks.take(40)) for i in range(3)]
    first = await llama_service.Prefill(pb.PrefillRequest(batch=batch(0, reqs)), None)
    assert list(first.batch.request_ids) == [0, 1, 2]
    victim = next(r for r in llama_service.batches[0].requests if r.id == 1)

    def boom(*_args: object) -> None:
        raise RuntimeError("stop sequence check exploded")

    monkeypatch.setattr(victim, "stopping", boom)
    resp = await llama_service.Decode(pb.DecodeRequest(batches=[first.batch]), None)
    errors = {g.request_id: g.error for g in resp.generations if g.HasField("error")}
    assert list(errors) == [1] and "exploded" in errors[1]
    assert list(resp.batch.request_ids) == [0, 2]
    assert {g.request_id for g in resp.generations if not g.HasField("error")} == {0, 2}
    rest = await run_to_end_from(llama_service, resp)
    assert all(len(rest[i]) + 2 == 8 for i in (0, 2))


async def run_to_end_from(service: TextGenerationService, resp: pb.DecodeResponse) -> dict[int, list]:
    out: dict[int, list] = {}
    while resp.HasField("batch"):
        resp = await service.Decode(pb.DecodeRequest(batches=[resp.batch]), None)
        for g in resp.generations:
            out.setdefault(g.request_id, []).append(g)
    return out
