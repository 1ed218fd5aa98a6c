from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from bench.workloads import WorkloadSpec, build, timed
from bench.workloads.multi_turn import MultiTurnParams, multi_turn
from bench.workloads.prompts import PromptBuilder
from bench.workloads.request import WorkloadRequest, offered_qps
from bench.workloads.token_ids import prompt_token_ids
from bench.workloads.trace import load_trace
from bench.workloads.zipf_rag import ZipfRagParams, zipf_rag

SHARED_TRACE = Path(__file__).resolve().parents[3] / "shared" / "traces" / "mooncake_synthetic_trace.jsonl"


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _shared_segment_tokens(a: WorkloadRequest, b: WorkloadRequest) -> int:
    n = 0
    for sa, sb in zip(a.segments, b.segments):
        if sa != sb:
            break
        n += sa[1]
    return n


def test_zipf_rag_is_seeded_skewed_and_sorted() -> None:
    params = ZipfRagParams(requests=300, corpus=200, top_k=7, alpha=1.2, seed=3)
    reqs = zipf_rag(params)
    assert reqs == zipf_rag(params)
    assert reqs != zipf_rag(ZipfRagParams(requests=300, corpus=200, top_k=7, alpha=1.2, seed=4))
    docs = Counter(s for r in reqs for s, _ in r.segments if s.startswith("doc"))
    assert docs["doc0"] > 5 * docs.get("doc100", 0)  # Zipf: the head recurs, the tail is rare
    for r in reqs:
        ranks = [int(s[3:]) for s, _ in r.segments if s.startswith("doc")]
        assert len(ranks) == 7 and ranks == sorted(set(ranks))
        assert r.segments[0][0].startswith("sys") and r.segments[-1][0].startswith("q")
        assert r.prompt_len == params.system_len + 7 * params.passage_len + params.question_len


def test_shared_segments_give_shared_token_prefixes() -> None:
    reqs = zipf_rag(ZipfRagParams(requests=60, corpus=30, seed=1))
    ids = [prompt_token_ids(r) for r in reqs]
    for i in range(len(reqs)):
        for j in range(i + 1, len(reqs)):
            shared = _shared_segment_tokens(reqs[i], reqs[j])
            assert _common_prefix(ids[i], ids[j]) >= shared
            assert _common_prefix(ids[i], ids[j]) < shared + 4  # distinct segments diverge at once
    assert [len(x) for x in ids] == [r.prompt_len for r in reqs]


def test_multi_turn_turns_extend_the_previous_prompt() -> None:
    reqs = multi_turn(MultiTurnParams(sessions=6, turns=4, concurrent=3))
    assert len(reqs) == 24
    last: dict[str, tuple] = {}
    for r in reqs:
        session = r.segments[1][0].split("u")[0]
        if session in last:
            prev = last[session]
            assert r.segments[: len(prev)] == prev and len(r.segments) == len(prev) + 2
        last[session] = r.segments


def test_poisson_timing_keeps_content_and_hits_the_rate() -> None:
    spec = WorkloadSpec("zipf-rag", requests=2000, zipf=ZipfRagParams(corpus=100))
    base = build(spec)
    fast, slow = timed(spec, base, 40.0), timed(spec, base, 10.0)
    assert [r.segments for r in fast] == [r.segments for r in slow] == [r.segments for r in base]
    assert offered_qps(fast) == pytest.approx(40.0, rel=0.1)
    assert offered_qps(slow) == pytest.approx(10.0, rel=0.1)


def test_segment_trace_and_time_scale(tmp_path) -> None:
    path = tmp_path / "t.jsonl"
    rows = [
        {"timestamp": 5.0, "segments": [["a", 10], ["b", 5]], "output_length": 3},
        {"timestamp": 4.0, "segments": [["a", 10], ["c", 7]], "output_length": 2},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reqs = load_trace(path, time_scale=2.0)
    assert [r.arrival for r in reqs] == [0.0, 2.0]
    assert reqs[0].segments == (("a", 10), ("c", 7)) and reqs[0].output_len == 2
    assert build(WorkloadSpec(f"trace:{path}"))[1].prompt_len == 15


@pytest.mark.skipif(not SHARED_TRACE.exists(), reason="shared trace not mounted")
def test_mooncake_trace_blocks_become_shared_512_token_prefixes() -> None:
    reqs = load_trace(SHARED_TRACE, limit=200)
    rows = [json.loads(line) for line in SHARED_TRACE.open().readlines()[:200]]
    rows.sort(key=lambda x: x["timestamp"])
    assert [r.prompt_len for r in reqs] == [row["input_length"] for row in rows]
    by_first = {}
    for r in reqs:
        by_first.setdefault(r.segments[0][0], []).append(r)
    group = max(by_first.values(), key=len)
    assert len(group) > 1
    a, b = prompt_token_ids(group[0]), prompt_token_ids(group[1])
    assert _common_prefix(a, b) >= 512


def _train_tokenizer(kind: str) -> Tokenizer:
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 7))) for _ in range(300)]
    corpus = [" ".join(rng.choice(words) for _ in range(40)) + "\n" for _ in range(400)]
    tok = Tokenizer(models.BPE(unk_token="[UNK]" if kind == "metaspace" else None))
    if kind == "bytelevel":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        alphabet = ["\n"]
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=alphabet, special_tokens=["[UNK]"])
    tok.train_from_iterator(corpus, trainer)
    return tok


@pytest.mark.parametrize("kind", ["bytelevel", "metaspace"])
def test_real_prompts_tokenize_to_shared_segment_prefixes(kind: str) -> None:
    builder = PromptBuilder(_train_tokenizer(kind))
    params = ZipfRagParams(requests=40, corpus=12, top_k=3, system_prompts=2, system_len=40, passage_len=20,
                           question_len=8, seed=2)
    reqs = zipf_rag(params)
    texts = [builder.prompt(r) for r in reqs]
    ids = [builder.token_ids(t) for t in texts]
    for r, t, x in zip(reqs, texts, ids):
        # the whole prompt tokenizes to the concatenation of its segments' tokens
        parts = [builder.token_ids(builder.segment_text(s, n)) for s, n in r.segments]
        assert x == [i for p in parts for i in p]
        assert abs(len(x) - r.prompt_len) <= len(r.segments)  # one newline token per segment at most
    for i in range(len(reqs)):
        for j in range(i + 1, len(reqs)):
            k = next(n for n, (a, b) in enumerate(zip(reqs[i].segments, reqs[j].segments)) if a != b)
            if k:
                shared_text = "".join(builder.segment_text(s, n) for s, n in reqs[i].segments[:k])
                assert texts[j].startswith(shared_text)
                assert _common_prefix(ids[i], ids[j]) >= len(builder.token_ids(shared_text))
