"""Sampling, stopping and incremental detokenization."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shard.detokenize import Detokenizer
from shard.sampling import FinishReason, NextTokenChooser, SamplingParams, StoppingCriteria, top_p, typical_p
from shard.sampling_batch import choose_batch, choose_one, device_safe

VOCAB = 50


def _logits(seed: int = 0) -> torch.Tensor:
    return torch.randn(VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def _draw(params: SamplingParams, steps: int = 30) -> list[int]:
    chooser, history = NextTokenChooser(params), [1, 2, 3]
    for i in range(steps):
        history.append(choose_one(chooser, _logits(i), history).token_id)
    return history[3:]


def test_greedy_takes_the_argmax_with_its_logprob() -> None:
    logits = _logits()
    choice = choose_one(NextTokenChooser(SamplingParams()), logits, [1])
    assert choice.token_id == int(logits.argmax())
    # NOTE: float64 is the oracle: fp32 log_softmax loses the precision of a near-certain token's logprob
    assert choice.logprob == pytest.approx(float(torch.log_softmax(logits.double(), -1).max()), rel=1e-5)


def _general(chooser: NextTokenChooser) -> NextTokenChooser:
    """The same chooser made to take the general path (as a plain chooser did before its one-pass path)."""
    chooser.plain = False
    return chooser


@pytest.mark.parametrize("one_pass_kernel", ["1", "0"])
def test_plain_greedy_path_matches_the_general_path(monkeypatch, one_pass_kernel: str) -> None:
    from flash_kernels.backends import cpu_pointwise

    monkeypatch.setenv(cpu_pointwise.ENV, one_pass_kernel)  # "0": the torch ops (as on a GPU)
    gen = torch.Generator().manual_seed(3)
    for vocab in (1, 7, 50, 2000, 32000):
        logits = torch.randn(6, vocab, generator=gen) * 8
        logits[1] = logits[1].round()  # ties: the first maximum, as argmax
        logits[2, : vocab // 2] = float("-inf")  # a grammar mask
        logits[3] = 0.0
        fast = choose_batch([NextTokenChooser(SamplingParams())] * 6, logits, [[0]] * 6)
        general = [_general(NextTokenChooser(SamplingParams())) for _ in range(6)]
        slow = choose_batch(general, logits, [[0]] * 6)
        exact = torch.log_softmax(logits.double(), -1)
        for row, (f, s) in enumerate(zip(fast, slow)):
            assert f.token_id == s.token_id == int(logits[row].argmax())
            assert f.logprob == pytest.approx(float(exact[row, f.token_id]), rel=1e-5, abs=1e-7)
            assert torch.allclose(f.logprobs, s.logprobs, atol=1e-5)  # top-n reads the whole distribution


@pytest.mark.parametrize("one_pass_kernel", ["1", "0"])
def test_plain_greedy_rows_without_a_valid_token_fail_alone(monkeypatch, one_pass_kernel: str) -> None:
    from flash_kernels.backends import cpu_pointwise

    monkeypatch.setenv(cpu_pointwise.ENV, one_pass_kernel)
    logits = torch.randn(5, 40, generator=torch.Generator().manual_seed(1))
    logits[0, 3] = float("nan")
    logits[1, 7] = float("inf")
    logits[2] = float("-inf")
    logits[3, :39] = float("-inf")  # one finite entry: a valid, certain choice
    plain = [NextTokenChooser(SamplingParams()) for _ in range(5)]
    general = [_general(NextTokenChooser(SamplingParams())) for _ in range(5)]
    for out in (choose_batch(plain, logits, [[0]] * 5), choose_batch(general, logits, [[0]] * 5)):
        assert [isinstance(c, ValueError) for c in out] == [True, True, True, False, False]
        assert (out[3].token_id, out[3].logprob) == (39, 0.0)
        assert out[4].token_id == int(logits[4].argmax())


def test_same_seed_same_tokens_other_seed_other_tokens() -> None:
    a = _draw(SamplingParams(do_sample=True, seed=7))
    assert a == _draw(SamplingParams(do_sample=True, seed=7))
    assert a != _draw(SamplingParams(do_sample=True, seed=8))


def test_warpers_turn_sampling_on_and_restrict_the_support() -> None:
    assert SamplingParams(top_k=3).samples and not SamplingParams().samples
    logits = _logits()
    allowed = set(torch.topk(logits, 3).indices.tolist())
    chooser = NextTokenChooser(SamplingParams(top_k=3, seed=1))
    assert {choose_one(chooser, logits, [0]).token_id for _ in range(40)} <= allowed


def test_top_p_and_typical_p_keep_at_least_one_token() -> None:
    logits = _logits()
    assert torch.isfinite(top_p(logits, 1e-6)).sum() == 1
    assert torch.isfinite(typical_p(logits, 1e-6)).sum() >= 1
    kept = torch.isfinite(top_p(logits, 0.9))
    probs = logits.softmax(-1)
    assert probs[kept].sum() >= 0.9 and probs[kept].min() >= probs[~kept].max()


def test_repetition_and_frequency_penalties_lower_seen_tokens() -> None:
    logits = torch.zeros(VOCAB)
    logits[5], logits[6] = 2.0, 1.9
    assert choose_one(NextTokenChooser(SamplingParams()), logits, [5]).token_id == 5
    assert choose_one(NextTokenChooser(SamplingParams(repetition_penalty=1.5)), logits, [5]).token_id == 6
    assert choose_one(NextTokenChooser(SamplingParams(frequency_penalty=1.0)), logits, [5, 5]).token_id == 6


def test_watermark_depends_on_the_previous_token() -> None:
    logits = torch.zeros(VOCAB)
    chooser = NextTokenChooser(SamplingParams(watermark=True))
    after_3, after_4 = choose_one(chooser, logits, [3]), choose_one(chooser, logits, [4])
    assert after_3.logprobs.tolist() != after_4.logprobs.tolist()


def test_invalid_values_are_refused() -> None:
    with pytest.raises(ValueError):
        SamplingParams(temperature=0.0)


def test_max_new_tokens_is_checked_before_eos() -> None:
    stop = StoppingCriteria(frozenset({1}), max_new_tokens=2)
    assert stop(5, "a") is None
    assert stop(1, "") == FinishReason.LENGTH  # EOS at the last allowed step reports length, as TGI
    assert StoppingCriteria(frozenset({1}), 9)(1, "") == FinishReason.EOS_TOKEN
    assert StoppingCriteria(frozenset({1}), 9, ignore_eos_token=True)(1, "") is None


def test_stop_sequences_match_the_decoded_tail() -> None:
    stop = StoppingCriteria(frozenset(), 99, stop_sequences=("end.",))
    assert [stop(7, t) for t in ("the", " e", "nd", ".")] == [None, None, None, FinishReason.STOP_SEQUENCE]


def test_incremental_detokenization_rebuilds_the_text(tiny_llama: Path) -> None:
    from tokenizers import Tokenizer

    detok = Detokenizer(Tokenizer.from_file(str(tiny_llama / "tokenizer.json")))
    text = "Hello wörld — a café ☕ by the sea"
    ids = detok.encode(text, True, 0)
    prompt_len = 2
    prefix, read = detok.initial_offsets(prompt_len)
    pieces = []
    for n in range(prompt_len + 1, len(ids) + 1):
        piece, prefix, read = detok.next_text(ids[:n], prefix, read)
        assert "\ufffd" not in piece
        pieces.append(piece)
    assert detok.text(ids[:prompt_len]) + "".join(pieces) == text
    assert "" in pieces  # multi-byte characters span tokens: their first tokens yield no text yet
    assert detok.is_special(ids[0]) and not detok.is_special(ids[1])
    assert detok.encode(text, True, 3) == ids[-3:]


def test_only_plain_greedy_rows_are_chosen_off_the_host() -> None:
    plain = NextTokenChooser(SamplingParams())
    assert device_safe([plain, NextTokenChooser(SamplingParams())])
    for other in (SamplingParams(temperature=0.5), SamplingParams(top_k=5), SamplingParams(top_p=0.9),
                  SamplingParams(typical_p=0.9), SamplingParams(do_sample=True, seed=1),
                  SamplingParams(repetition_penalty=1.2), SamplingParams(frequency_penalty=0.5),
                  SamplingParams(watermark=True)):
        assert not device_safe([plain, NextTokenChooser(other)]), other
    # the device path is choose_batch itself: same tokens and logprobs as one row at a time
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    batch = choose_batch([plain] * 3, logits, [[1], [2], [3]])
    for i, choice in enumerate(batch):
        one = choose_one(plain, logits[i], [i + 1])
        assert (choice.token_id, choice.logprob) == (one.token_id, one.logprob)
