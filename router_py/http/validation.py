"""Request validation in TGI's order and words (tgi-compat 3.2).

Two stages, as in TGI: :func:`parse_generate_request` is the JSON deserializer (wrong types, missing
``inputs``: text/plain 422 ``Failed to deserialize the JSON body into the target type: ...``, a
:class:`FrameworkError`), and :class:`Validator` checks values and lengths (JSON 422 ``Input validation error:
...``, an :class:`HttpError`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from router_py.router_config import RouterConfig
from router_py.http.errors import FrameworkError, deserialize_error, validation_error
from router_py.backend_api import DEFAULT_GENERATION_LENGTH, ChooserParams, StoppingParams, ValidRequest
from router_py.tenancy import base_namespace
from router_py.tokenizer import Tokenizer, truncate_ids

GRAMMAR_TYPES = ("json", "json_object", "regex", "json_schema")
T = TypeVar("T")


@dataclass(frozen=True)
class GenerateParameters:
    """TGI's ``GenerateParameters``; ``None`` is "not given". Built by the deserializer or by the OpenAI
    routes."""

    best_of: int | None = None
    temperature: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None
    do_sample: bool = False
    max_new_tokens: int | None = None
    return_full_text: bool | None = None
    stop: tuple[str, ...] = ()
    truncate: int | None = None
    watermark: bool = False
    details: bool = False
    decoder_input_details: bool = False
    seed: int | None = None
    top_n_tokens: int | None = None
    grammar: dict[str, Any] | None = None
    adapter_id: str | None = None
    ignore_eos: bool = False  # OpenAI routes only (vLLM's `ignore_eos`); not a field of TGI's body
    # NOTE: OpenAI routes only, checked there (router_py.http.openai_sampling); not fields of TGI's body
    min_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()
    min_p: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    skip_special_tokens: bool = True  # vLLM's (router_py.http.special_text)


@dataclass(frozen=True)
class GenerateRequest:
    inputs: str
    parameters: GenerateParameters = field(default_factory=GenerateParameters)
    stream: bool = False
    session: str | None = None  # not in the body: set by the route (routes_common.request_session)
    # NOTE: not in the body: a token-id prompt (OpenAI completions, router_py.http.openai_prompt, ids already
    # checked against the vocabulary), taken as it is instead of tokenizing ``inputs`` (then "")
    input_ids: tuple[int, ...] | None = None


# ---- deserializer (serde semantics) ------------------------------------------------------------------------

# field -> (kind, nullable); kinds name serde's expectations
_PARAM_FIELDS: dict[str, tuple[str, bool]] = {
    "best_of": ("usize", True),
    "temperature": ("f32", True),
    "repetition_penalty": ("f32", True),
    "frequency_penalty": ("f32", True),
    "top_k": ("i32", True),
    "top_p": ("f32", True),
    "typical_p": ("f32", True),
    "do_sample": ("bool", False),
    "max_new_tokens": ("u32", True),
    "return_full_text": ("bool", True),
    "stop": ("strings", False),
    "truncate": ("usize", True),
    "watermark": ("bool", False),
    "details": ("bool", False),
    "decoder_input_details": ("bool", False),
    "seed": ("u64", True),
    "top_n_tokens": ("u32", True),
    "grammar": ("grammar", True),
    "adapter_id": ("string", True),
}
_INT_RANGES = {
    "u32": (0, 2**32 - 1),
    "u64": (0, 2**64 - 1),
    "usize": (0, 2**64 - 1),
    "i32": (-(2**31), 2**31 - 1),
    "i64": (-(2**63), 2**63 - 1),
}
_EXPECTED = {
    "string": "a string",
    "bool": "a boolean",
    "strings": "a sequence",
    "string_or_strings": "a string or a sequence",
    "i64s": "a sequence",
    "map": "a map",
    "grammar": "internally tagged enum",
}


def unexpected(value: Any) -> str:
    """serde's ``Unexpected`` rendering of a JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value!r}`"
    if isinstance(value, str):
        return f'string "{value}"'
    return "sequence" if isinstance(value, list) else "map"


def _type_error(path: str, value: Any, expected: str) -> FrameworkError:
    return deserialize_error(f"{path}: invalid type: {unexpected(value)}, expected {expected}")


def check_value(path: str, kind: str, nullable: bool, value: Any) -> Any:
    """Return ``value`` converted to its Python type, or raise the deserializer's error."""
    if value is None and nullable:
        return None
    expected = _EXPECTED.get(kind, kind)
    if kind in _INT_RANGES:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(path, value, expected)
        low, high = _INT_RANGES[kind]
        if not low <= value <= high:
            raise deserialize_error(f"{path}: invalid value: integer `{value}`, expected {kind}")
        return value
    if kind == "f32":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(path, value, expected)
        return float(value)
    if kind == "bool" and isinstance(value, bool) or kind == "string" and isinstance(value, str):
        return value
    if kind == "string_or_strings" and isinstance(value, str):  # OpenAI's `stop`: one string or a list
        return (value,)
    if kind in ("strings", "string_or_strings") and isinstance(value, list):
        return tuple(check_value(f"{path}[{i}]", "string", False, v) for i, v in enumerate(value))
    if kind == "i64s" and isinstance(value, list):
        return tuple(check_value(f"{path}[{i}]", "i64", False, v) for i, v in enumerate(value))
    if kind == "map" and isinstance(value, dict):
        return value
    if kind == "grammar" and isinstance(value, dict):
        return _check_grammar(path, value)
    raise _type_error(path, value, expected)


def _check_grammar(path: str, value: dict[str, Any]) -> dict[str, Any]:
    if "type" not in value:
        raise deserialize_error(f"{path}: missing field `type`")
    kind = value["type"]
    if kind not in GRAMMAR_TYPES:
        variants = ", ".join(f"`{t}`" for t in GRAMMAR_TYPES)
        raise deserialize_error(f"{path}: unknown variant `{kind}`, expected one of {variants}")
    if "value" not in value:
        raise deserialize_error(f"{path}: missing field `value`")
    return value


def parse_parameters(raw: Any, path: str = "parameters") -> GenerateParameters:
    if not isinstance(raw, dict):
        raise _type_error(path, raw, "struct GenerateParameters")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _PARAM_FIELDS:
            kind, nullable = _PARAM_FIELDS[key]
            values[key] = check_value(f"{path}.{key}", kind, nullable, value)
    return GenerateParameters(**values)


def parse_generate_request(body: Any, compat: bool = False) -> GenerateRequest:
    """Deserialize a ``/generate`` (or, with ``compat``, a ``/``) body. Absent ``parameters`` means TGI's
    ``default_parameters()``: sampling on."""
    struct = "CompatGenerateRequest" if compat else "GenerateRequest"
    if not isinstance(body, dict):
        raise deserialize_error(f"invalid type: {unexpected(body)}, expected struct {struct}")
    inputs = check_value("inputs", "string", False, body["inputs"]) if "inputs" in body else None
    params = (
        parse_parameters(body["parameters"]) if "parameters" in body else GenerateParameters(do_sample=True)
    )
    stream = check_value("stream", "bool", False, body["stream"]) if compat and "stream" in body else False
    if inputs is None:
        raise deserialize_error("missing field `inputs`")
    return GenerateRequest(inputs=inputs, parameters=params, stream=stream)


# ---- value validation (TGI's Validation::validate) ---------------------------------------------------------


def tenant_namespace(config: RouterConfig, headers: Any) -> str:
    """The cache namespace of a request's tenant (see :mod:`router_py.tenancy`): the keys-file tenant of the
    presented key, else the operator's tenant header when set and present, else a hash of the presented API key
    when one key is enforced, else the shared namespace ``""``."""
    return base_namespace(config.tenants, config.tenant_header, config.api_key, headers)


class Validator:
    """Checks a :class:`GenerateRequest` and turns it into the backend's :class:`ValidRequest`. Prompts are
    tokenized on ``config.validation_workers`` threads (TGI's validation workers): the tokenizer releases
    the GIL, so a long prompt (about 3 ms for 1,500 tokens) does not hold the event loop, which streams
    the other requests' tokens and feeds the batcher meanwhile."""

    def __init__(self, tokenizer: Tokenizer, config: RouterConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self._workers = ThreadPoolExecutor(config.validation_workers, thread_name_prefix="validation")

    async def on_workers(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a validation worker: tokenizing, here and on the tokenize routes."""
        return await asyncio.get_running_loop().run_in_executor(self._workers, fn, *args)

    def validate_best_of(self, best_of: int) -> int:
        if self.config.max_best_of == 1 and best_of != 1:
            raise validation_error("`best_of` != 1 is not allowed for this endpoint")
        if best_of > self.config.max_best_of:
            raise validation_error(
                f"`best_of` must be > 0 and <= {self.config.max_best_of}. Given: {best_of}"
            )
        return best_of

    async def validate(
        self, request: GenerateRequest, namespace: str = "", add_special_tokens: bool = True
    ) -> ValidRequest:
        """Raises HttpError(422) with TGI's first failing check, in TGI's order. A token-id prompt
        (``request.input_ids``) is not tokenized: its ids are the prompt as they are (``add_special_tokens``
        does not apply), its text is their decoding (special tokens kept)."""
        p = request.parameters
        sampling_params = self._sampling(p)
        top_n_tokens = self._scalar_checks(p)
        if not request.inputs and not request.input_ids:
            raise validation_error("`inputs` cannot be empty")
        cfg = self.config
        if p.truncate is not None and (p.truncate == 0 or p.truncate > cfg.max_input_tokens):
            raise validation_error(
                "`truncate` must be strictly positive and less than "
                f"{cfg.max_input_tokens}. Given: {p.truncate}"
            )
        ids_given = request.input_ids is not None
        inputs, input_ids = await self._prompt(request, p.truncate, add_special_tokens)
        max_new_tokens = self._check_lengths(len(input_ids), p.max_new_tokens)
        # NOTE: the grammar, TGI's last check, is checked by router_py.http.grammar.with_grammar off the event loop
        namespace = f"{namespace}@{p.adapter_id}" if p.adapter_id else namespace
        return ValidRequest(
            inputs=inputs,
            input_ids=tuple(input_ids),
            truncate=p.truncate if p.truncate is not None else cfg.max_input_tokens,
            sampling=sampling_params,
            stopping=StoppingParams(
                max_new_tokens=max_new_tokens,
                stop_sequences=p.stop,
                ignore_eos_token=p.ignore_eos,
                min_tokens=p.min_tokens,
                stop_token_ids=p.stop_token_ids,
            ),
            add_special_tokens=add_special_tokens and not ids_given,
            decoder_input_details=p.decoder_input_details,
            top_n_tokens=top_n_tokens,
            adapter_id=p.adapter_id,
            namespace=namespace,
            session=request.session,
            ids_given=ids_given,
            skip_special_tokens=p.skip_special_tokens,
        )

    def _sampling(self, p: GenerateParameters) -> ChooserParams:
        best_of = p.best_of if p.best_of is not None else 1
        sampling = p.do_sample or any(v is not None for v in (p.temperature, p.top_k, p.top_p, p.typical_p))
        if best_of > 1 and not sampling:
            raise validation_error("you must use sampling when `best_of` is > 1")
        temperature = _positive(p.temperature, 1.0, "temperature")
        repetition_penalty = _positive(p.repetition_penalty, 1.0, "repetition_penalty")
        frequency_penalty = p.frequency_penalty if p.frequency_penalty is not None else 0.0
        if not -2.0 <= frequency_penalty <= 2.0:
            raise validation_error("`frequency_penalty` must be >= -2.0 and <= 2.0")
        top_p = _open_unit(p.top_p, "top_p")
        typical_p = _open_unit(p.typical_p, "typical_p")
        if p.top_k is not None and p.top_k <= 0:
            raise validation_error("`top_k` must be strictly positive")
        return ChooserParams(
            temperature=temperature,
            top_k=p.top_k or 0,
            top_p=top_p,
            typical_p=typical_p,
            do_sample=p.do_sample,
            seed=random.getrandbits(64) if p.seed is None else p.seed,
            repetition_penalty=repetition_penalty,
            frequency_penalty=frequency_penalty,
            watermark=p.watermark,
            min_p=p.min_p,
            logit_bias=p.logit_bias,
        )

    def _scalar_checks(self, p: GenerateParameters) -> int:
        """max_new_tokens==0, stop count, seed with best_of, top_n_tokens; returns top_n_tokens."""
        cfg = self.config
        if p.max_new_tokens == 0:
            raise validation_error("`max_new_tokens` must be strictly positive")
        if len(p.stop) > cfg.max_stop_sequences:
            raise validation_error(
                f"`stop` supports up to {cfg.max_stop_sequences} stop sequences. Given: {len(p.stop)}"
            )
        if (p.best_of or 1) > 1 and p.seed is not None:
            raise validation_error("`seed` must not be set when `best_of` > 1")
        top_n = p.top_n_tokens or 0
        if top_n > cfg.max_top_n_tokens:
            raise validation_error(
                f"`top_n_tokens` must be >= 0 and <= {cfg.max_top_n_tokens}. Given: {top_n}"
            )
        return top_n

    def _tokenize(self, inputs: str, truncate: int | None, add_special_tokens: bool) -> list[int]:
        try:
            ids = self.tokenizer.encode(inputs, add_special_tokens=add_special_tokens)
        except Exception as exc:  # noqa: BLE001 - TGI reports any tokenizer failure this way
            raise validation_error(f"tokenizer error {exc}") from exc
        return truncate_ids(ids, truncate) if truncate is not None else ids

    async def _prompt(
        self, request: GenerateRequest, truncate: int | None, add_special_tokens: bool
    ) -> tuple[str, list[int]]:
        """The prompt's text and ids, on a validation worker: a text prompt tokenized, a token-id prompt's ids
        as they are."""
        if request.input_ids is not None:
            return await self.on_workers(self._given_ids, request.input_ids, truncate)
        ids = await self.on_workers(self._tokenize, request.inputs, truncate, add_special_tokens)
        return request.inputs, ids

    def _given_ids(self, ids: tuple[int, ...], truncate: int | None) -> tuple[str, list[int]]:
        """A token-id prompt's text (all its ids decoded, special tokens kept, as vLLM's echo) and its ids
        (truncated as a text prompt's would be)."""
        try:
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
        except Exception as exc:  # noqa: BLE001 - as a tokenizing failure
            raise validation_error(f"tokenizer error {exc}") from exc
        return text, truncate_ids(list(ids), truncate) if truncate is not None else list(ids)

    def _check_lengths(self, input_length: int, max_new_tokens: int | None) -> int:
        """TGI's order: the total first, then the prompt alone; so a prompt longer than ``max_total_tokens``
        gets the total's error (with 0 ``max_new_tokens`` when none was asked for)."""
        cfg = self.config
        if max_new_tokens is None:
            max_new_tokens = max(cfg.max_total_tokens - input_length, 0)
        if input_length + min(max_new_tokens, DEFAULT_GENERATION_LENGTH) > cfg.max_total_tokens:
            raise validation_error(
                f"`inputs` tokens + `max_new_tokens` must be <= {cfg.max_total_tokens}. "
                f"Given: {input_length} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
            )
        if input_length > cfg.max_input_tokens:
            raise validation_error(
                f"`inputs` must have less than {cfg.max_input_tokens} tokens. Given: {input_length}"
            )
        return max_new_tokens


def _positive(value: float | None, default: float, name: str) -> float:
    if value is None:
        return default
    if value <= 0:
        raise validation_error(f"`{name}` must be strictly positive")
    return value


def _open_unit(value: float | None, name: str) -> float:
    if value is None:
        return 1.0
    if value <= 0.0 or value >= 1.0:
        raise validation_error(f"`{name}` must be > 0.0 and < 1.0")
    return value
