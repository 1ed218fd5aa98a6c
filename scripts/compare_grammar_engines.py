"""Compare grammar engines for constrained decoding: compile time, per-token mask cost at batch 1 and 32, and
which JSON Schema features each accepts (and whether what it generates validates).

One-off evaluation behind docs/structured-output.md (engines not chosen are not project dependencies):

    pip install --no-deps --target /tmp/grammar-eval llguidance==1.9.1 xgrammar==0.2.9 \
        apache-tvm-ffi==0.1.15.post2 outlines-core==0.2.14
    PYTHONPATH=/tmp/grammar-eval:. python scripts/compare_grammar_engines.py [--vocab 32000]

Tokens are drawn uniformly among the allowed ones (what a random-weight model does), seeded; each engine runs
the same schemas and vocabulary in the same process.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import jsonschema
import torch

TOOL_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"enum": ["get_weather", "search_flights", "book_hotel"]},
        "arguments": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "maxLength": 40},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
                "passengers": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string", "maxLength": 20},
                            "age": {"type": "integer"},
                        },
                        "required": ["name", "age"],
                        "additionalProperties": False,
                    },
                    "maxItems": 3,
                },
                "flexible": {"type": "boolean"},
            },
            "required": ["location", "unit", "days", "passengers"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "arguments"],
    "additionalProperties": False,
}

FEATURES: dict[str, dict] = {
    "enum/const": {
        "type": "object",
        "properties": {"a": {"enum": [1, "x", None]}, "b": {"const": "k"}},
        "required": ["a", "b"],
    },
    "string pattern": {
        "type": "object",
        "properties": {"a": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3}$"}},
        "required": ["a"],
    },
    "minLength/maxLength": {
        "type": "object",
        "properties": {"a": {"type": "string", "minLength": 2, "maxLength": 5}},
        "required": ["a"],
    },
    "integer bounds": {
        "type": "object",
        "properties": {"a": {"type": "integer", "minimum": 3, "maximum": 77}},
        "required": ["a"],
    },
    "number exclusive bounds": {
        "type": "object",
        "properties": {"a": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}},
        "required": ["a"],
    },
    "array min/maxItems": {
        "type": "object",
        "properties": {"a": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 4}},
        "required": ["a"],
    },
    "prefixItems": {
        "type": "object",
        "properties": {
            "a": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False}
        },
        "required": ["a"],
    },
    "anyOf": {
        "type": "object",
        "properties": {"a": {"anyOf": [{"type": "integer"}, {"type": "string"}]}},
        "required": ["a"],
    },
    "oneOf": {
        "type": "object",
        "properties": {"a": {"oneOf": [{"type": "integer"}, {"type": "boolean"}]}},
        "required": ["a"],
    },
    "allOf": {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            {"properties": {"b": {"type": "string"}}, "required": ["b"]},
        ]
    },
    "$ref/$defs": {
        "$defs": {"p": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}},
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/p"}},
        "required": ["a"],
    },
    "recursive $ref": {
        "$defs": {
            "n": {
                "type": "object",
                "properties": {
                    "v": {"type": "integer"},
                    "kids": {"type": "array", "maxItems": 2, "items": {"$ref": "#/$defs/n"}},
                },
                "required": ["v"],
                "additionalProperties": False,
            }
        },
        "$ref": "#/$defs/n",
    },
    "additionalProperties schema": {"type": "object", "additionalProperties": {"type": "integer"}},
    "format date-time/email/uuid": {
        "type": "object",
        "properties": {
            "t": {"type": "string", "format": "date-time"},
            "e": {"type": "string", "format": "email"},
            "u": {"type": "string", "format": "uuid"},
        },
        "required": ["t", "e", "u"],
    },
    "uniqueItems": {
        "type": "object",
        "properties": {"a": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}},
        "required": ["a"],
    },
    "multipleOf": {
        "type": "object",
        "properties": {"a": {"type": "integer", "multipleOf": 5}},
        "required": ["a"],
    },
    "not": {"type": "object", "properties": {"a": {"not": {"type": "string"}}}, "required": ["a"]},
    "if/then/else": {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "if": {"properties": {"a": {"const": 1}}},
        "then": {"required": ["b"]},
    },
    "patternProperties": {
        "type": "object",
        "patternProperties": {"^x_": {"type": "integer"}},
        "additionalProperties": False,
    },
    "minProperties": {"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 2},
}


def build_tokenizer(vocab: int):
    """A byte-level BPE of ``vocab`` tokens (the demo tokenizer's recipe, on a larger synthetic corpus)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    base = (Path(__file__).resolve().parents[1] / "shard/demo_data/corpus.txt").read_text().split()
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    words = ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(60000)]
    lines = [" ".join(rng.choices(base + words, k=12)) for _ in range(40000)]
    lines += [json.dumps({rng.choice(words): rng.randint(0, 999), "k": [rng.random()]}) for _ in range(5000)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def allowed_ids(mask_row: torch.Tensor, vocab: int) -> list[int]:
    bits = (mask_row.view(-1, 1) >> torch.arange(32, dtype=torch.int32)) & 1
    return [i for i in bits.flatten().nonzero().flatten().tolist() if i < vocab]


class Llguidance:
    name = "llguidance 1.9.1"

    def __init__(self, hf_tok) -> None:
        import llguidance
        import llguidance.hf
        import llguidance.torch as lt

        self.ll, self.lt = llguidance, lt
        self.tok = llguidance.hf.from_tokenizer(hf_tok)
        self.executor = llguidance.LLExecutor()

    def compile(self, schema: dict):
        grammar = self.ll.LLMatcher.grammar_from_json_schema(json.dumps(schema))
        m = self.ll.LLMatcher(self.tok, grammar, log_level=0)
        if m.is_error():
            raise ValueError(m.get_error())
        return m

    def fresh(self, compiled):
        return compiled.deep_copy()

    def fill(self, matchers, bitmask) -> None:
        if len(matchers) == 1:
            self.lt.fill_next_token_bitmask(matchers[0], bitmask, 0)
        else:
            self.lt.fill_next_token_bitmask_par(
                self.executor, [(m, i) for i, m in enumerate(matchers)], bitmask
            )

    def accept(self, m, token: int) -> None:
        assert m.consume_token(token), m.get_error()

    def done(self, m) -> bool:
        return m.is_stopped()


class Xgrammar:
    name = "xgrammar 0.2.9"

    def __init__(self, hf_tok) -> None:
        import xgrammar as xgr

        self.xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(hf_tok, vocab_size=len(hf_tok))
        self.compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self.batch = xgr.BatchGrammarMatcher(max_threads=2)

    def compile(self, schema: dict):
        return self.compiler.compile_json_schema(json.dumps(schema))

    def fresh(self, compiled):
        return self.xgr.GrammarMatcher(compiled)

    def fill(self, matchers, bitmask) -> None:
        if len(matchers) == 1:
            matchers[0].fill_next_token_bitmask(bitmask, 0)
        else:
            self.batch.batch_fill_next_token_bitmask(matchers, bitmask)

    def accept(self, m, token: int) -> None:
        assert m.accept_token(token)

    def done(self, m) -> bool:
        return m.is_terminated()


class OutlinesCore:
    name = "outlines-core 0.2.14"

    def __init__(self, hf_tok) -> None:
        import outlines_core as oc
        from outlines_core.json_schema import build_regex_from_schema

        self.oc, self.to_regex = oc, build_regex_from_schema
        eos = hf_tok.eos_token_id
        byte_decoder = {v: k for k, v in _bytes_to_unicode().items()}
        tokens: dict[bytes, list[int]] = {}
        for text, i in hf_tok.get_vocab().items():
            if i == eos or text in ("<s>", "<pad>"):
                continue
            tokens.setdefault(bytes(byte_decoder[c] for c in text), []).append(i)
        self.vocab = oc.Vocabulary(eos, tokens)

    def compile(self, schema: dict):
        return self.oc.Index(self.to_regex(json.dumps(schema)), self.vocab)

    def fresh(self, compiled):
        return self.oc.Guide(compiled)

    def fill(self, matchers, bitmask) -> None:
        for i, g in enumerate(matchers):  # no batch API: one call per row
            row = bitmask[i]
            g.write_mask_into(row.data_ptr(), row.numel(), row.element_size())

    def accept(self, m, token: int) -> None:
        m.advance(token)

    def done(self, m) -> bool:
        return m.is_finished()


def _bytes_to_unicode() -> dict[int, str]:
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def drive(engine, compiled, batch: int, steps: int, vocab: int, eos: int, seed: int):
    """Decode ``batch`` documents for up to ``steps`` tokens, each token uniform among the allowed ones (EOS
    taken with probability 1/2 when allowed). Returns (mask seconds per step, texts of finished documents)."""
    rng = random.Random(seed)
    matchers = [engine.fresh(compiled) for _ in range(batch)]
    tokens: list[list[int]] = [[] for _ in range(batch)]
    live = list(range(batch))
    bitmask = torch.full((batch, (vocab + 31) // 32), -1, dtype=torch.int32)
    times = []
    for _ in range(steps):
        if not live:
            break
        t0 = time.perf_counter()
        engine.fill([matchers[i] for i in live], bitmask)
        times.append(time.perf_counter() - t0)
        for row, i in enumerate(list(live)):
            ids = allowed_ids(bitmask[row], vocab)
            token = (
                eos if eos in ids and rng.random() < 0.5 else rng.choice([t for t in ids if t != eos] or ids)
            )
            if token == eos:
                live.remove(i)
                continue
            engine.accept(matchers[i], token)
            tokens[i].append(token)
            if engine.done(matchers[i]):
                live.remove(i)
        for i in list(live):  # compact rows
            pass
    finished = [i for i in range(batch) if i not in live]
    return times, [tokens[i] for i in finished]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    torch.set_num_threads(1)
    hf_tok = build_tokenizer(args.vocab)
    vocab, eos = len(hf_tok), hf_tok.eos_token_id
    print(f"vocabulary: {vocab} tokens")
    for cls in (Llguidance, Xgrammar, OutlinesCore):
        t0 = time.perf_counter()
        engine = cls(hf_tok)
        setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        compiled = engine.compile(TOOL_SCHEMA)
        compile_s = time.perf_counter() - t0
        line = [
            f"{engine.name}: tokenizer setup {setup * 1e3:.0f} ms, "
            f"tool schema compile {compile_s * 1e3:.1f} ms"
        ]
        for batch in (1, 32):
            times, docs = drive(engine, compiled, batch, args.steps, vocab, eos, seed=batch)
            bad = [d for d in docs if not _valid(hf_tok.decode(d), TOOL_SCHEMA)]
            line.append(
                f"b{batch}: mask median {statistics.median(times) * 1e6:.0f} us/step "
                f"({statistics.median(times) / batch * 1e6:.0f} us/row), "
                f"{len(docs)} docs done, {len(bad)} invalid"
            )
        print("; ".join(line), flush=True)
        for feature, schema in FEATURES.items():
            try:
                t0 = time.perf_counter()
                c = engine.compile(schema)
                ms = (time.perf_counter() - t0) * 1e3
            except Exception as err:  # noqa: BLE001 - report what the engine said
                print(f"  {feature}: REJECTED ({str(err).splitlines()[0][:100]})")
                continue
            try:
                _, docs = drive(engine, c, 16, 150, vocab, eos, seed=7)
            except Exception as err:  # noqa: BLE001
                print(f"  {feature}: compiled {ms:.1f} ms, generation failed ({str(err)[:80]})")
                continue
            bad = [hf_tok.decode(d) for d in docs if not _valid(hf_tok.decode(d), schema)]
            print(
                f"  {feature}: compiled {ms:.1f} ms, {len(docs)}/16 finished, {len(bad)} invalid"
                + (f" e.g. {bad[0][:80]!r}" if bad else ""),
                flush=True,
            )


def _valid(text: str, schema: dict) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema, format_checker=jsonschema.FormatChecker())
        return True
    except (ValueError, jsonschema.ValidationError):
        return False


if __name__ == "__main__":
    main()
