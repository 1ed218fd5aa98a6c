"""Reusing a prompt opening's token ids: always the ids the whole text gets, for every tokenizer configuration
admitted, under eviction and from several threads; configurations where a cut could change ids are refused."""

from __future__ import annotations

import json
import random
import threading

import pytest
from tokenizers import Regex
from tokenizers import Tokenizer as HfTokenizer
from tokenizers import models, normalizers, pre_tokenizers, processors, trainers

from router_py.prefix_tokens import KNOWN_SPLIT_PATTERNS, PrefixTokenCache, exactness_problem
from router_py.tokenizer import Tokenizer

WORDS = ("the", "passage", "it's", "we'll", "Zürich", "naïve", "déjà", "vu", "42", "3.14", "x1", "HTTP/2",
         "co-op", "e.g.", "<s>", "</s>", "tab\there", "new\nline", "two  spaces", "\U0001f600", "日本語",
         "emoji\u200dzwj", "A", "b", "CAPS", "--", "'quoted'", " ", "\r\n", "mid\u00a0nbsp")
CORPUS = [" ".join(random.Random(i).choices(WORDS, k=40)) for i in range(200)]
LLAMA3_PATTERN = sorted(p for p in KNOWN_SPLIT_PATTERNS if r"\p{N}{1,3}" in p)[0]


def _bpe(pre: pre_tokenizers.PreTokenizer, normalizer: normalizers.Normalizer | None = None) -> HfTokenizer:
    hf = HfTokenizer(models.BPE())
    hf.pre_tokenizer = pre
    if normalizer is not None:
        hf.normalizer = normalizer
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(CORPUS, trainer)
    hf.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A <s> $B", special_tokens=[("<s>", 0), ("</s>", 1)]
    )
    return hf


def _wordpiece() -> HfTokenizer:
    hf = HfTokenizer(models.WordPiece(unk_token="[UNK]"))
    hf.normalizer = normalizers.BertNormalizer(lowercase=True)
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.train_from_iterator(CORPUS, trainers.WordPieceTrainer(
        vocab_size=400, special_tokens=["[UNK]", "[CLS]", "[SEP]"], show_progress=False))
    hf.post_processor = processors.BertProcessing(("[SEP]", 2), ("[CLS]", 1))
    return hf


def _unigram() -> HfTokenizer:
    hf = HfTokenizer(models.Unigram())
    hf.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(True)])
    hf.train_from_iterator(CORPUS, trainers.UnigramTrainer(vocab_size=300, show_progress=False,
                                                           special_tokens=["<unk>"], unk_token="<unk>"))
    return hf


def _sentencepiece(normalizer: normalizers.Normalizer | None, pre: pre_tokenizers.PreTokenizer | None,
                   fuse_unk: bool = False) -> HfTokenizer:
    """A SentencePiece-style BPE: trained with spaces as a leading marker, then served with ``normalizer``
    and ``pre`` (as Llama 2, Mistral and Gemma ship theirs)."""
    hf = HfTokenizer(models.BPE(unk_token="<unk>", fuse_unk=fuse_unk))
    hf.pre_tokenizer = pre_tokenizers.Metaspace()
    hf.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>", "<s>", "</s>"],
                                                       show_progress=False))
    hf.normalizer, hf.pre_tokenizer = normalizer, pre
    hf.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return hf


ADMITTED = {
    "gpt2 byte-level": lambda: _bpe(pre_tokenizers.ByteLevel(add_prefix_space=False)),
    "byte-level with a prefix space, NFC": lambda: _bpe(pre_tokenizers.ByteLevel(add_prefix_space=True),
                                                        normalizers.NFC()),
    "llama3 split": lambda: _bpe(pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])),
    "bert wordpiece": _wordpiece,
    "sentencepiece, metaspace splitting": lambda: _sentencepiece(normalizers.NFKC(), pre_tokenizers.Metaspace()),
    "sentencepiece, metaspace whole (mistral)": lambda: _sentencepiece(
        None, pre_tokenizers.Metaspace(prepend_scheme="first", split=False)),
    "sentencepiece, prepend and replace (llama 2)": lambda: _sentencepiece(
        normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]), None),
    "sentencepiece, replace (gemma)": lambda: _sentencepiece(normalizers.Replace(" ", "\u2581"), None),
    "unigram": _unigram,
}


def _text(rng: random.Random, words: int, specials: bool = True) -> str:
    vocabulary = WORDS if specials else tuple(w for w in WORDS if w not in ("<s>", "</s>"))
    return " ".join(rng.choices(vocabulary + ("word",) * 20, k=words))


@pytest.mark.parametrize("name", sorted(ADMITTED))
def test_reused_ids_equal_the_whole_texts_ids(name: str) -> None:
    hf = ADMITTED[name]()
    assert exactness_problem(json.loads(hf.to_str())) is None
    cache, why = PrefixTokenCache.for_tokenizer(hf)
    assert cache is not None and why is None
    cache.stride = 24  # NOTE: many cuts per text, so every kind of word meets one
    rng = random.Random(name)
    openings = [_text(rng, 60, specials=i % 2 == 0) for i in range(4)]
    for i in range(120):
        text = rng.choice(openings) + rng.choice(("", " ", "\n", " word")) + _text(rng, rng.randrange(0, 30))
        special = i % 3 != 0
        assert cache.encode(text, special) == hf.encode(text, add_special_tokens=special).ids, text
    assert cache.cached_chars > 0


def test_a_known_opening_is_not_tokenized_again() -> None:
    hf = ADMITTED["gpt2 byte-level"]()
    cache, _ = PrefixTokenCache.for_tokenizer(hf)
    assert cache is not None
    opening = _text(random.Random(0), 2000)
    cache.encode(opening + " first question")
    seen: list[str] = []
    real = cache._piece_ids
    cache._piece_ids = lambda piece, i: seen.append(piece) or real(piece, i)  # type: ignore[method-assign]
    text = opening + " second question"
    assert cache.encode(text) == hf.encode(text).ids
    assert sum(map(len, seen)) < cache.stride + len(" second question") < len(text) / 4


def test_cuts_fall_on_a_space_between_ascii_letters_and_follow_the_stride() -> None:
    hf = ADMITTED["gpt2 byte-level"]()
    cache, _ = PrefixTokenCache.for_tokenizer(hf)
    assert cache is not None
    cache.stride = 10
    text = "abc def 12 34 ghi jkl mno pqr ä b c d"
    cuts = cache.cuts(text)
    assert cuts and all(text[c] == " " and text[c - 1].isascii() and text[c + 1].isascii() for c in cuts)
    assert all(text[c - 1].isalpha() and text[c + 1].isalpha() for c in cuts)
    assert all(b - a >= 10 for a, b in zip([0, *cuts], cuts))
    assert cache.cuts(text[: cuts[1] + 2]) == cuts[:2]  # NOTE: a shared opening has the same cuts
    assert cache.cuts("x" * 100) == [] and cache.cuts("short text") == []


def test_eviction_keeps_the_trie_bounded_and_the_ids_exact() -> None:
    hf = ADMITTED["gpt2 byte-level"]()
    cache, _ = PrefixTokenCache.for_tokenizer(hf)
    assert cache is not None
    cache.stride, cache.capacity_chars = 24, 2000
    rng = random.Random(1)
    hot = _text(rng, 80)
    for i in range(200):
        text = (hot if i % 4 == 0 else _text(rng, 80)) + " tail"
        assert cache.encode(text) == hf.encode(text).ids
        assert cache.cached_chars <= cache.capacity_chars
    seen: list[str] = []
    real = cache._piece_ids
    cache._piece_ids = lambda piece, i: seen.append(piece) or real(piece, i)  # type: ignore[method-assign]
    cache.encode(hot + " tail")
    assert sum(map(len, seen)) < len(hot) / 2  # NOTE: the recently used opening outlived the others


def test_threads_encoding_at_once_under_eviction_get_exact_ids() -> None:
    hf = ADMITTED["gpt2 byte-level"]()
    cache, _ = PrefixTokenCache.for_tokenizer(hf)
    assert cache is not None
    cache.stride, cache.capacity_chars = 24, 3000
    openings = [_text(random.Random(i), 60) for i in range(6)]
    wrong: list[str] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(150):
            text = rng.choice(openings) + " " + _text(rng, rng.randrange(1, 20))
            if cache.encode(text) != hf.encode(text).ids:
                wrong.append(text)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == [] and 0 < cache.cached_chars <= cache.capacity_chars


def _config(hf: HfTokenizer) -> dict:
    return json.loads(hf.to_str())


def _refusals() -> dict[str, dict]:
    base = ADMITTED["gpt2 byte-level"]()
    cases = {}
    unigram = _config(ADMITTED["unigram"]())
    unigram["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": False}
    cases["a unigram model over whole texts"] = unigram
    no_regex = _config(base)
    no_regex["pre_tokenizer"]["use_regex"] = False
    cases["byte-level without its regex"] = no_regex
    other_split = _config(ADMITTED["llama3 split"]())
    other_split["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+ \p{L}+|\s+"
    cases["an unknown split pattern"] = other_split
    strip = _config(base)
    strip["normalizer"] = {"type": "Strip", "strip_left": True, "strip_right": True}
    cases["a stripping normalizer"] = strip
    spaced = _config(base)
    spaced["added_tokens"].append({"id": 499, "content": "a b", "single_word": False, "lstrip": False,
                                   "rstrip": False, "normalized": False, "special": False})
    cases["an added token with a space"] = spaced
    strip = _config(base)
    strip["added_tokens"][0]["lstrip"] = True
    cases["an added token stripping spaces"] = strip
    spanning = _config(ADMITTED["sentencepiece, replace (gemma)"]())
    spanning["model"]["vocab"]["a\u2581b"] = len(spanning["model"]["vocab"])
    cases["a token spanning a space, whole texts"] = spanning
    ignoring = _config(ADMITTED["sentencepiece, replace (gemma)"]())
    ignoring["model"]["ignore_merges"] = True
    cases["whole texts, words looked up before merging"] = ignoring
    replaced = _config(base)
    replaced["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": "x"}
    cases["a space replaced before a splitting pre-tokenizer"] = replaced
    truncating = _config(base)
    truncating["truncation"] = {"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0}
    cases["truncation"] = truncating
    return cases


@pytest.mark.parametrize("case", sorted(_refusals()))
def test_a_configuration_a_cut_could_change_is_refused(case: str) -> None:
    config = _refusals()[case]
    assert exactness_problem(config) is not None
    hf = HfTokenizer.from_str(json.dumps(config))
    cache, why = PrefixTokenCache.for_tokenizer(hf)
    assert cache is None and why
    tokenizer = Tokenizer(hf)
    text = _text(random.Random(2), 300)
    assert tokenizer.prefix_reuse_off and tokenizer.encode(text) == hf.encode(text).ids


def test_the_router_tokenizer_reuses_unless_told_not_to(tokenizer: Tokenizer, monkeypatch) -> None:
    assert tokenizer.prefix_reuse_off is None
    text = _text(random.Random(3), 500)
    assert tokenizer.encode(text) == tokenizer._hf.encode(text).ids
    monkeypatch.setenv("PRISM_TOKEN_REUSE", "0")
    assert Tokenizer(tokenizer._hf).prefix_reuse_off == "PRISM_TOKEN_REUSE=0"
