"""Reuse of a prompt's tokenization across prompts that open with the same text.

RAG and agent prompts repeat their opening text (system prompt, tools, passages), and tokenizing it is the
largest part of a request's path outside the forward (docs/performance.md). A text is cut into pieces at
*cuts*: an ASCII space with an ASCII letter on each side, the first at or after every ``stride`` characters
from the previous cut (so two texts that share an opening share its cuts). The pieces before the last cut are
kept in a trie, each node holding its piece's ids; a text's ids are its known leading pieces' ids followed by
the rest, tokenized as separate pieces, with the post-processor's special tokens around them.

Why that equals tokenizing the whole text, for the configurations :func:`exactness_problem` admits: added
tokens are found first and none contains a space or strips one, so none spans a cut; the normalizers admitted
change characters one by one or by Unicode normalization, which does not compose across an ASCII space, except
``Prepend``, which marks each text between added tokens at its start, so the pieces after the first are
tokenized without it (:func:`continuation_config`) and a text whose later pieces hold an added token is
tokenized whole. Then either the first pre-tokenizer splits the text at every cut (each admitted regex has no
alternative that matches a letter followed by a space, so no match spans the cut, and the matches before it end
at it in both texts) and later pre-tokenizers and the model work within those splits; or nothing splits (a
SentencePiece-style BPE: spaces become a marker such as ``\u2581``) and no token in the vocabulary holds the
marker after another character, so no merge spans a cut and BPE merges each side as it would alone. The
post-processors admitted add the same tokens before and after any single sequence (checked on two probes).
"""

from __future__ import annotations

import json
import re
import threading
from array import array
from typing import Any

# The first pre-tokenizer's regex, where it is a Split: GPT-2's, Llama 3's, Qwen2's.
KNOWN_SPLIT_PATTERNS = frozenset({
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+",
})
_NORMALIZERS = frozenset({"NFC", "NFD", "NFKC", "NFKD", "Lowercase", "BertNormalizer"})
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LATER_PRE_TOKENIZERS = frozenset({"ByteLevel", "Digits", "Punctuation", "Whitespace", "WhitespaceSplit",
                                   "BertPreTokenizer", "Split"})
_MODELS = frozenset({"BPE", "WordPiece", "WordLevel", "Unigram"})
_POST_PROCESSORS = frozenset({"TemplateProcessing", "RobertaProcessing", "BertProcessing", "ByteLevel"})
_CUT = re.compile(r"(?<=[A-Za-z]) (?=[A-Za-z])")
_PROBES = ("a b", "hello world")


def exactness_problem(config: dict[str, Any]) -> str | None:
    """Why cutting texts at an ASCII space between ASCII letters could change this tokenizer's ids (None: it
    cannot). ``config`` is the parsed ``tokenizer.json``."""
    if config.get("truncation") or config.get("padding"):
        return "truncation or padding is configured"
    for token in config.get("added_tokens") or ():
        if " " in token.get("content", "") or token.get("lstrip") or token.get("rstrip") or token.get(
            "single_word"
        ):
            return f"added token {token.get('content')!r} holds or strips spaces"
    normalizers = _steps(config.get("normalizer"))
    if not all(_char_local(n) for n in normalizers):
        return "normalizer"
    model = config.get("model") or {}
    if model.get("type") not in _MODELS or model.get("dropout"):
        return "model"
    problem = _pre_tokenizer_problem(_steps(config.get("pre_tokenizer")), normalizers, model)
    if problem:
        return problem
    if not all(p.get("type") in _POST_PROCESSORS for p in _steps(config.get("post_processor"))):
        return "post-processor"
    return None


def continuation_config(config: dict[str, Any]) -> dict[str, Any] | None:
    """The configuration a piece after the first is tokenized with: ``config`` without a ``Prepend``
    normalizer, which marks the start of a text (None: there is none, the same tokenizer does)."""
    normalizers = _steps(config.get("normalizer"))
    kept = [n for n in normalizers if n.get("type") != "Prepend"]
    if len(kept) == len(normalizers):
        return None
    return dict(config, normalizer={"type": "Sequence", "normalizers": kept} if kept else None)


def _char_local(step: dict[str, Any]) -> bool:
    """A normalizer that maps characters one by one (or by Unicode normalization, which does not compose
    across an ASCII space), or marks the text's start (``Prepend``: see :func:`continuation_config`)."""
    kind = step.get("type")
    if kind == "Replace":
        return (step.get("pattern") or {}).get("String") == " " and _one_char(step.get("content"))
    if kind == "Prepend":
        return _one_char(step.get("prepend"))
    return kind in _NORMALIZERS


def _one_char(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 1


def _pre_tokenizer_problem(
    pre: list[dict[str, Any]], normalizers: list[dict[str, Any]], model: dict[str, Any]
) -> str | None:
    """Either the first pre-tokenizer splits at every cut, or the space is a marker the model sees (then a
    whole text between added tokens may be one word: :func:`_whole_segment_problem`)."""
    first = pre[0] if pre else None
    if first is not None and first.get("type") != "Metaspace":
        if any(n.get("type") in ("Replace", "Prepend") for n in normalizers):
            return "normalizer (a space replaced or a start marked before a splitting pre-tokenizer)"
        if not _splits_at_spaces(first) or not all(_later_pre_tokenizer(p) for p in pre[1:]):
            return "pre-tokenizer"
        return None
    # NOTE: SentencePiece-style: a space is a marker (Metaspace's replacement, a Replace normalizer's)
    replaced = [n["content"] for n in normalizers if n.get("type") == "Replace"]
    marker = str(first.get("replacement", "\u2581")) if first is not None else (replaced or [" "])[-1]
    if any(content != marker for content in replaced):
        return "normalizer (a space replaced by another marker)"
    if first is not None and first.get("split", True):
        return None if all(_later_pre_tokenizer(p) for p in pre[1:]) else "pre-tokenizer"
    return "pre-tokenizer" if len(pre) > 1 else _whole_segment_problem(model, marker)


def _whole_segment_problem(model: dict[str, Any], marker: str) -> str | None:
    """The model sees a whole segment as one word (no splitting pre-tokenizer): cutting at a space is exact
    when no token can span one, i.e. every token holding ``marker`` holds it only in a leading run, and the
    model does nothing per word beyond its merges."""
    if model.get("type") != "BPE" or model.get("ignore_merges"):
        return "model (a whole text is one word)"
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return "model (word prefixes or suffixes)"
    vocab = model.get("vocab") or {}
    if model.get("fuse_unk") and not _LETTERS <= vocab.keys():
        return "model (unknown letters fused)"
    if any(marker in token.lstrip(marker) for token in vocab):
        return f"model (a token spans a {marker!r})"
    return None


def _steps(component: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A normalizer / pre-tokenizer / post-processor as its list of steps (a Sequence flattened)."""
    if component is None:
        return []
    if component.get("type") == "Sequence":
        inner = component.get("normalizers") or component.get("pretokenizers") or component.get("processors")
        return [s for c in inner or () for s in _steps(c)]
    return [component]


def _splits_at_spaces(step: dict[str, Any]) -> bool:
    kind = step.get("type")
    if kind == "ByteLevel":
        return bool(step.get("use_regex", True))
    if kind == "Split":
        pattern = step.get("pattern") or {}
        return (pattern.get("Regex") in KNOWN_SPLIT_PATTERNS and step.get("behavior") == "Isolated"
                and not step.get("invert"))
    return kind in ("Whitespace", "WhitespaceSplit", "BertPreTokenizer")


def _later_pre_tokenizer(step: dict[str, Any]) -> bool:
    """A step after the first splits within its splits; a Split must be one the first step could be."""
    if step.get("type") == "Split":
        return _splits_at_spaces(step)
    return step.get("type") in _LATER_PRE_TOKENIZERS


class _Node:
    __slots__ = ("children", "ids", "parent", "piece", "used")

    def __init__(self, parent: _Node | None, piece: str, ids: array) -> None:
        self.parent, self.piece, self.ids = parent, piece, ids
        self.children: dict[str, _Node] = {}
        self.used = 0


class PrefixTokenCache:
    """Encodes texts as ``tokenizers.Tokenizer.encode(text, add_special_tokens).ids`` would, reusing the ids
    of known leading pieces. Thread-safe (the router tokenizes on several validation workers); the trie holds
    at most about ``capacity_chars`` characters of pieces, least recently used leaves evicted first."""

    def __init__(
        self, hf: Any, around: tuple[tuple[int, ...], tuple[int, ...]], continuation: Any = None,
        stride: int = 512, capacity_chars: int = 1 << 22,
    ) -> None:
        """``around``: the ids the post-processor puts before and after a sequence; ``continuation``: the
        tokenizer of the pieces after the first (:func:`continuation_config`; None: ``hf``)."""
        self._hf, self._around, self.stride, self.capacity_chars = hf, around, stride, capacity_chars
        self._next = continuation if continuation is not None else hf
        # NOTE: with a start marker (Prepend), each text between added tokens is marked, so a piece after the
        # first that holds an added token is not tokenized on its own
        contents = sorted((t.content for t in hf.get_added_tokens_decoder().values()), key=len, reverse=True)
        marked = continuation is not None and contents
        self._guard = re.compile("|".join(map(re.escape, contents))) if marked else None
        self._root = _Node(None, "", array("l"))
        self._chars = 0
        self._clock = 0
        self._lock = threading.Lock()

    @classmethod
    def for_tokenizer(cls, hf: Any) -> tuple[PrefixTokenCache | None, str | None]:
        """A cache for ``hf`` and None, or None and why its ids could change when cut."""
        try:
            config = json.loads(hf.to_str())
        except (ValueError, AttributeError) as err:  # NOTE: a tokenizer we cannot read back is only tokenized whole
            return None, f"its configuration does not read back ({err})"
        problem = exactness_problem(config)
        around = _special_layout(hf) if problem is None else None
        if around is None:
            return None, problem or "the post-processor's tokens depend on the text"
        cont = continuation_config(config)
        return cls(hf, around, type(hf).from_str(json.dumps(cont)) if cont else None), None

    @property
    def cached_chars(self) -> int:
        return self._chars

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        cuts = self.cuts(text)
        if not cuts:
            return self._whole(text, add_special_tokens)
        bounds = [0, *cuts, len(text)]
        pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
        ids: list[int] = []
        with self._lock:
            node, known = self._known(pieces[:-1], ids)
        # NOTE: known pieces after the first passed this check when they were inserted
        if self._guard is not None and any(self._guard.search(p) for p in pieces[max(known, 1) :]):
            return self._whole(text, add_special_tokens)
        fresh = [self._piece_ids(piece, known + i) for i, piece in enumerate(pieces[known:])]
        with self._lock:
            self._insert(node, pieces[known:-1], fresh)
        for piece_ids in fresh:
            ids.extend(piece_ids)
        if not add_special_tokens:
            return ids
        before, after = self._around
        return [*before, *ids, *after]

    def _whole(self, text: str, add_special_tokens: bool) -> list[int]:
        return encode_whole(self._hf, text, add_special_tokens)

    def _piece_ids(self, piece: str, index: int) -> array:
        # NOTE: one call per piece: a batch call spreads them over tokenizers' thread pool, half the wall time
        # for 1.15x the CPU, taken from the cores a CPU shard steps on
        tokenizer = self._next if index else self._hf
        return array("l", tokenizer.encode_batch_fast([piece], add_special_tokens=False)[0].ids)

    def cuts(self, text: str) -> list[int]:
        """Where ``text`` is cut: an ASCII space between ASCII letters, the first at or after every
        ``stride`` characters from the previous cut."""
        out: list[int] = []
        at = self.stride
        while at < len(text):
            found = _CUT.search(text, at)
            if found is None:
                break
            out.append(found.start())
            at = found.start() + self.stride
        return out

    def _known(self, pieces: list[str], ids: list[int]) -> tuple[_Node, int]:
        """The deepest node along ``pieces`` and its depth; its path's ids appended to ``ids``."""
        self._clock += 1
        node, depth = self._root, 0
        for piece in pieces:
            child = node.children.get(piece)
            if child is None:
                break
            child.used = self._clock
            ids.extend(child.ids)
            node, depth = child, depth + 1
        return node, depth

    def _insert(self, node: _Node, pieces: list[str], piece_ids: list[array]) -> None:
        if node is not self._root and node.parent is None:
            return  # evicted meanwhile
        for piece, ids in zip(pieces, piece_ids):
            child = node.children.get(piece)
            if child is None:
                child = node.children[piece] = _Node(node, piece, ids)
                self._chars += len(piece)
            child.used = self._clock
            node = child
        if self._chars > self.capacity_chars:
            self._evict(self.capacity_chars * 3 // 4)

    def _evict(self, target: int) -> None:
        while self._chars > target:
            for leaf in sorted(self._leaves(), key=lambda n: n.used):
                if self._chars <= target:
                    return
                assert leaf.parent is not None
                del leaf.parent.children[leaf.piece]
                leaf.parent = None
                self._chars -= len(leaf.piece)

    def _leaves(self) -> list[_Node]:
        out, stack = [], list(self._root.children.values())
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            else:
                out.append(node)
        return out


def encode_whole(hf: Any, text: str, add_special_tokens: bool) -> list[int]:
    """``hf.encode(text, add_special_tokens).ids``, by the batch call that skips offsets: the same ids for
    about 2/3 of encode's CPU."""
    return list(hf.encode_batch_fast([text], add_special_tokens=add_special_tokens)[0].ids)


def _special_layout(hf: Any) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The ids the post-processor puts before and after a single sequence, the same for every probe (None when
    they are not: it adds tokens inside, or they depend on the text)."""
    layouts = set()
    for probe in _PROBES:
        bare = hf.encode(probe, add_special_tokens=False).ids
        full = hf.encode(probe, add_special_tokens=True).ids
        starts = [i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare]
        if not starts:
            return None
        i = starts[0]
        layouts.add((tuple(full[:i]), tuple(full[i + len(bare) :])))
    return layouts.pop() if len(layouts) == 1 else None


__all__ = ["KNOWN_SPLIT_PATTERNS", "PrefixTokenCache", "encode_whole", "exactness_problem"]
