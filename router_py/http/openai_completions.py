"""OpenAI (legacy) completions over TGI's generation (tgi-compat 3.8): CompletionRequest → one GenerateRequest
per prompt, and the ``text_completion`` bodies."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from router_py.router_config import RouterConfig
from router_py.http.errors import HttpError, deserialize_error, validation_error
from router_py.backend_api import EndEvent, Token
from router_py.http.openai_chat import (
    openai_finish_reason, openai_stops, openai_top_p, system_fingerprint, token_label, vllm_top_k
)
from router_py.http.openai_prompt import Prompt, parse_prompts
from router_py.http.openai_sampling import VLLM_SAMPLING_FIELDS, vllm_sampling
from router_py.http.prompt_logprobs import FIELD as PROMPT_LOGPROBS_FIELD, alternatives_asked, check_prompt_logprobs
from router_py.http.special_text import FIELD as SPECIAL_TEXT_FIELD, skip_special_tokens
from router_py.http.openai_stop import token_text
from router_py.http.openai_usage import StreamUsage, parse_stream_options, usage
from router_py.http.structured_outputs import output_grammar, with_guided
from router_py.http.tools import response_format_grammar
from router_py.http.validation import GenerateParameters, check_value, unexpected
from router_py.http.vllm_unserved import check_vllm_fields

_COMPLETION_FIELDS: dict[str, tuple[str, bool]] = {
    "model": ("string", True),
    "max_tokens": ("u32", True),
    "temperature": ("f32", True),
    "top_p": ("f32", True),
    "stream": ("bool", False),
    "seed": ("u64", True),
    "suffix": ("string", True),
    "repetition_penalty": ("f32", True),
    "frequency_penalty": ("f32", True),
    "stop": ("string_or_strings", True),  # OpenAI's: a string or a list of them
    "n": ("u32", True),
    "ignore_eos": ("bool", True),  # vLLM's extension: generate past EOS up to max_tokens
    "include_stop_str_in_output": ("bool", True),  # vLLM's (openai_stop.include_stop)
    "top_k": ("i32", True),  # vLLM's extension; 0 or -1: off, as there
    "logprobs": ("u32", True),  # OpenAI's: that many alternatives per token (0 to 5)
    "echo": ("bool", True),
    "best_of": ("u32", True),
    "response_format": ("map", True),  # as on the chat route (vLLM serves it here too)
    "structured_outputs": ("map", True),  # vLLM's (router_py.http.structured_outputs)
    "return_tokens_as_token_ids": ("bool", True),  # vLLM's: logprobs name tokens "token_id:N"
    **VLLM_SAMPLING_FIELDS,
    **SPECIAL_TEXT_FIELD,
    **PROMPT_LOGPROBS_FIELD,
}
MAX_LOGPROBS = 5  # OpenAI's limit, and TGI's default max_top_n_tokens


@dataclass(frozen=True)
class CompletionRequest:
    prompts: list[Prompt]  # text or token ids (router_py.http.openai_prompt)
    fields: dict[str, Any]
    stream_usage: StreamUsage = StreamUsage()  # stream_options (router_py.http.openai_usage)

    def get(self, name: str) -> Any:
        return self.fields.get(name)

    @property
    def stream(self) -> bool:
        return bool(self.fields.get("stream"))

    @property
    def echo(self) -> bool:
        return bool(self.fields.get("echo"))

    @property
    def logprobs(self) -> int | None:
        """OpenAI's ``logprobs``: None (none), else alternatives per token (0 to :data:`MAX_LOGPROBS`)."""
        return self.fields.get("logprobs")

    @property
    def tokens_as_ids(self) -> bool:
        return bool(self.fields.get("return_tokens_as_token_ids"))

    @property
    def echo_logprobs(self) -> bool:
        """``echo`` with ``logprobs``: the echoed prompt's tokens come with their logprobs and alternatives."""
        return self.echo and self.logprobs is not None

    @property
    def prompt_logprobs(self) -> int | None:
        """vLLM's ``prompt_logprobs`` (:mod:`router_py.http.prompt_logprobs`; None: not asked)."""
        return self.fields.get("prompt_logprobs")

    @property
    def prompt_only(self) -> bool:
        """vLLM's ``echo`` with ``max_tokens`` 0: the prompt alone (one token is generated and dropped)."""
        return self.echo and self.fields.get("max_tokens") == 0


def parse_completion_request(
    body: Any, max_client_batch_size: int, vocab_size: int | None = None
) -> CompletionRequest:
    """Deserialize (the prompt's shapes: :func:`router_py.http.openai_prompt.parse_prompts`, token ids checked
    against ``vocab_size`` when given), then TGI's two handler checks: ``suffix`` and the prompt count (422
    with their own error_type)."""
    if not isinstance(body, dict):
        raise deserialize_error(f"invalid type: {unexpected(body)}, expected struct CompletionRequest")
    fields = {
        k: check_value(k, *_COMPLETION_FIELDS[k], v) for k, v in body.items() if k in _COMPLETION_FIELDS
    }
    if "prompt" not in body:
        raise deserialize_error("missing field `prompt`")
    prompts = parse_prompts(body["prompt"], vocab_size)
    if fields.get("suffix") is not None:
        raise HttpError(
            422,
            "suffix not supported",
            "Suffix is not supported and can be achieved by preprocessing the prompt.",
        )
    if len(prompts) > max_client_batch_size:
        raise HttpError(
            422,
            "batch size exceeded",
            f"Number of prompts exceeds the maximum allowed batch size of {max_client_batch_size}",
        )
    fields["structured_outputs"] = with_guided(body, fields.get("structured_outputs"))
    check_vllm_fields(body, chat=False)
    return CompletionRequest(prompts, fields, parse_stream_options(body))


def completion_parameters(req: CompletionRequest, vocab_size: int | None = None) -> GenerateParameters:
    """Temperature 0 → greedy, else sampling; details on so finish reasons and counts come back; vLLM's
    sampling fields and ``response_format`` (a grammar) as on the chat route; ``logprobs`` becomes
    ``top_n_tokens``; with ``echo`` or vLLM's ``prompt_logprobs`` the prompt's logprobs are asked for too
    (``decoder_input_details``, which bypasses the prefix cache, as in TGI). Raises HttpError 422
    (validation)."""
    _check_unserved(req)
    prompt_k = check_prompt_logprobs(req.prompt_logprobs, req.stream, MAX_LOGPROBS)
    temperature = req.get("temperature")
    do_sample = not (temperature is not None and temperature == 0.0)
    model = req.get("model")
    return GenerateParameters(
        temperature=temperature if do_sample else None,
        repetition_penalty=req.get("repetition_penalty"),
        frequency_penalty=req.get("frequency_penalty"),
        top_p=openai_top_p(req.get("top_p")),
        top_k=vllm_top_k(req.get("top_k")) if do_sample else None,  # NOTE: see vllm_top_k
        do_sample=do_sample,
        max_new_tokens=1 if req.prompt_only else req.get("max_tokens"),
        stop=openai_stops(req.get("stop")),
        details=True,
        decoder_input_details=req.echo_logprobs or prompt_k is not None,
        seed=req.get("seed"),
        ignore_eos=bool(req.get("ignore_eos")),
        adapter_id=model if model is not None and model != "tgi" else None,
        top_n_tokens=alternatives_asked(req.logprobs, prompt_k),
        grammar=output_grammar(response_format_grammar(req.get("response_format")), req.get("structured_outputs")),
        skip_special_tokens=skip_special_tokens(req.get("skip_special_tokens")),
        **vllm_sampling(req.get, req.get("max_tokens"), vocab_size),
    )


def _check_unserved(req: CompletionRequest) -> None:
    """What would otherwise be silently wrong (TGI accepts and ignores these fields) is a clear 422:
    ``best_of`` other than 1 (vLLM's V1 engine refuses it too), ``logprobs`` above OpenAI's 5."""
    best_of = req.get("best_of")
    if best_of is not None and best_of != 1:
        raise validation_error(f"`best_of` must be 1: one sequence per choice is generated. Given: {best_of}")
    if req.logprobs is not None and req.logprobs > MAX_LOGPROBS:
        raise validation_error(f"`logprobs` must be >= 0 and <= {MAX_LOGPROBS}. Given: {req.logprobs}")


def completion_logprobs(
    tokens: list[Token], tops: list[list[Token] | None], offset: int = 0, as_ids: bool = False
) -> dict[str, Any]:
    """OpenAI's legacy logprobs object of some tokens: their texts (special tokens empty, as in the text),
    logprobs, ``{text: logprob}`` of their alternatives and themselves (as OpenAI's: the likeliest and the
    chosen; None where a token has none, the echoed prompt's first), and where each starts in the choice's text
    (``offset``: where the first one does). ``as_ids``: tokens and alternatives named ``token_id:N``
    (:func:`~router_py.http.openai_chat.token_label`); the offsets stay those of the text."""
    texts = [token_text(t) for t in tokens]
    starts = [offset + sum(len(x) for x in texts[:i]) for i in range(len(texts))]
    padded = tops if tops else [[] for _ in tokens]
    return {
        "tokens": [token_label(t, True) for t in tokens] if as_ids else texts,
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [_alternatives(t, top, as_ids) for t, top in zip(tokens, padded)],
        "text_offset": starts,
    }


def _alternatives(token: Token, top: list[Token] | None, as_ids: bool) -> dict[str, float | None] | None:
    if top is None:
        return None
    out = {token_label(t, as_ids): t.logprob for t in top}
    if all(t.id != token.id for t in top):  # NOTE: by id: a chosen token's text is incremental, theirs alone
        out[token_label(token, as_ids)] = token.logprob
    return out


def echoed_prompt(
    prefill: list[Token], tops: list[list[Token]], special_text: bool, k: int
) -> tuple[list[Token], list[list[Token] | None]]:
    """The prompt's tokens and (up to ``k``) alternatives for an echo with logprobs (the first token has
    neither: None). ``special_text``: the echoed text keeps special tokens' text (a token-id prompt's), so
    their tokens do."""
    tokens = [replace(t, special=False) for t in prefill] if special_text else list(prefill)
    rest = [top[:k] for top in tops[1:]] if tops else [[] for _ in prefill[1:]]
    return tokens, [None, *rest][: len(tokens)]


def usage_chunk(config: RouterConfig, created: int, totals: dict[str, int]) -> dict[str, Any]:
    """The usage-only chunk (``choices: []``) sent before ``[DONE]`` when ``stream_options.include_usage``."""
    return {**_envelope(config, created), "choices": [], "usage": totals}


def _envelope(config: RouterConfig, created: int) -> dict[str, Any]:
    return {
        "object": "text_completion",
        "id": "",
        "created": created,
        "model": config.model_id,
        "system_fingerprint": system_fingerprint(config),
    }


def completion(
    config: RouterConfig,
    created: int,
    ends: list[EndEvent],
    prompt_tokens: int,
    texts: list[str] | None = None,
    logprobs: list[dict[str, Any] | None] | None = None,
    prompt_logprobs: list[list | None] | None = None,
) -> dict[str, Any]:
    """``texts`` replace the generated texts (``echo``); ``logprobs`` are the choices' (None: none);
    ``prompt_logprobs`` the choices' vLLM ``prompt_logprobs`` (None: the key left out)."""
    choices = [
        {
            "index": i,
            "text": texts[i] if texts is not None else end.generated_text,
            "logprobs": logprobs[i] if logprobs is not None else None,
            "finish_reason": openai_finish_reason(end.finish_reason),
        }
        for i, end in enumerate(ends)
    ]
    for choice, scores in zip(choices, prompt_logprobs or ()):
        choice["prompt_logprobs"] = scores
    completion_tokens = sum(end.generated_tokens for end in ends)
    return {
        **_envelope(config, created),
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    }


def completion_chunk(
    config: RouterConfig,
    created: int,
    index: int,
    text: str,
    finish: str | None,
    logprobs: dict[str, Any] | None = None,
    usage_body: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One choice's chunk; ``usage_body`` (vLLM's ``continuous_usage_stats``) is its running usage, else the
    chunk has no ``usage`` key."""
    choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
    chunk = {**_envelope(config, created), "choices": [choice]}
    if usage_body is not None:
        chunk["usage"] = usage_body
    return chunk
