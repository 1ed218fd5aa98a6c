"""OpenAI chat completions over TGI's generation (tgi-compat 3.8): ChatRequest → prompt + GenerateParameters,
and the ``chat.completion`` / ``chat.completion.chunk`` bodies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from router_py.router_config import VERSION, RouterConfig
from router_py.http.errors import deserialize_error, validation_error
from router_py.backend_api import EndEvent, Token, TokenEvent
from router_py.http.openai_sampling import VLLM_SAMPLING_FIELDS, vllm_sampling
from router_py.http.prompt_logprobs import FIELD as PROMPT_LOGPROBS_FIELD, alternatives_asked, check_prompt_logprobs
from router_py.http.special_text import FIELD as SPECIAL_TEXT_FIELD, skip_special_tokens
from router_py.http.openai_stop import token_text
from router_py.http.openai_usage import StreamUsage, parse_stream_options, usage
from router_py.http.structured_outputs import with_guided
from router_py.http.validation import GenerateParameters, check_value, unexpected
from router_py.http.vllm_unserved import check_vllm_fields

MAX_TOP_LOGPROBS = 5  # TGI's default max_top_n_tokens (the router's --max-top-n-tokens)

_CHAT_FIELDS: dict[str, tuple[str, bool]] = {
    "model": ("string", True),
    "frequency_penalty": ("f32", True),
    "logprobs": ("bool", True),
    "top_logprobs": ("i64", True),  # NOTE: signed, so -1 is check_top_logprobs' 422, not the deserializer's
    "max_tokens": ("u32", True),
    "max_completion_tokens": ("u32", True),
    "n": ("u32", True),
    "presence_penalty": ("f32", True),
    "repetition_penalty": ("f32", True),
    "seed": ("u64", True),
    "stop": ("string_or_strings", True),  # OpenAI's: a string or a list of them
    "stream": ("bool", False),
    "temperature": ("f32", True),
    "top_p": ("f32", True),
    "tool_prompt": ("string", True),
    "structured_outputs": ("map", True),  # vLLM's (router_py.http.structured_outputs)
    "chat_template_kwargs": ("map", True),  # vLLM's three template fields: template_options
    "add_generation_prompt": ("bool", True),
    "continue_final_message": ("bool", True),
    "chat_template": ("string", True),
    "ignore_eos": ("bool", True),  # vLLM's extension: generate past EOS up to max_tokens
    "include_stop_str_in_output": ("bool", True),  # vLLM's (openai_stop.include_stop)
    "top_k": ("i32", True),  # vLLM's extension; 0 or -1: off, as there
    "return_tokens_as_token_ids": ("bool", True),  # vLLM's: logprobs name tokens "token_id:N" (token_label)
    **VLLM_SAMPLING_FIELDS,
    **SPECIAL_TEXT_FIELD,
    **PROMPT_LOGPROBS_FIELD,
}
# NOTE: the body of PyPI text-generation 0.7.0's ``chat()``: every field of its ChatRequest, nulls included
# (``request.dict()``). That client json-decodes every ``data:`` line and has no case for ``[DONE]``.
_TGI_CLIENT_CHAT_KEYS = frozenset(
    {
        "model", "messages", "repetition_penalty", "frequency_penalty", "logit_bias", "logprobs",
        "top_logprobs", "max_tokens", "n", "presence_penalty", "stream", "seed", "temperature", "top_p",
        "tools", "tool_choice",
    }
)


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, Any]]
    fields: dict[str, Any]
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: Any = None
    stream_usage: StreamUsage = StreamUsage()  # stream_options (router_py.http.openai_usage)
    tgi_client: bool = False  # the body is PyPI text-generation 0.7.0's (see is_tgi_client_body, StreamRole)

    def get(self, name: str) -> Any:
        return self.fields.get(name)

    @property
    def stream(self) -> bool:
        return bool(self.fields.get("stream"))

    @property
    def logprobs(self) -> bool:
        return bool(self.fields.get("logprobs"))

    @property
    def tokens_as_ids(self) -> bool:
        return bool(self.fields.get("return_tokens_as_token_ids"))


@dataclass(frozen=True)
class TemplateOptions:
    """How the chat template renders a request (router_py.chat_template.ChatTemplate.render)."""

    add_generation_prompt: bool = True
    continue_final: bool = False
    extra: dict[str, Any] | None = None


_TEMPLATE_SET = frozenset({"messages", "bos_token", "eos_token", "add_generation_prompt", "tools"})


def template_options(req: ChatRequest) -> TemplateOptions:
    """vLLM's template fields: ``chat_template_kwargs`` (more template variables, e.g. Qwen3's
    ``enable_thinking``), ``add_generation_prompt`` (default true) and ``continue_final_message`` (the prompt
    ends inside the final message, which the model continues; the generation prompt is then off unless asked
    for, and asking for both is a 422, as in vLLM). TGI ignores them, so a template variable asked for was
    silently not set. A per-request ``chat_template`` is refused: the model's template is the one used.
    Raises HttpError 422 (validation)."""
    if req.get("chat_template") is not None:
        raise validation_error("`chat_template` is not supported: the model's chat template is used")
    extra = req.get("chat_template_kwargs") or None
    taken = sorted(_TEMPLATE_SET.intersection(extra or ()))
    if taken:
        raise validation_error(f"`chat_template_kwargs` cannot set {', '.join(taken)}: the router sets them")
    continue_final = bool(req.get("continue_final_message"))
    add = req.get("add_generation_prompt")
    if continue_final and add:
        raise validation_error("`continue_final_message` and `add_generation_prompt` cannot both be true")
    return TemplateOptions(not continue_final if add is None else add, continue_final, extra)


def system_fingerprint(config: RouterConfig) -> str:
    return f"{VERSION}-{config.docker_label or 'native'}"


def parse_chat_request(body: Any) -> ChatRequest:
    """Deserialize a ChatRequest (framework-level 422 text on wrong types or missing ``messages``)."""
    if not isinstance(body, dict):
        raise deserialize_error(f"invalid type: {unexpected(body)}, expected struct ChatRequest")
    fields = {k: check_value(k, *_CHAT_FIELDS[k], v) for k, v in body.items() if k in _CHAT_FIELDS}
    if "messages" not in body:
        raise deserialize_error("missing field `messages`")
    messages = _parse_messages(body["messages"])
    if not messages:  # NOTE: OpenAI and vLLM refuse it too; TGI templated it into a prompt of no message
        raise validation_error("`messages` must not be empty")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise deserialize_error(f"tools: invalid type: {unexpected(tools)}, expected a sequence")
    fields["structured_outputs"] = with_guided(body, fields.get("structured_outputs"))
    check_vllm_fields(body, chat=True)
    return ChatRequest(
        messages,
        fields,
        tools,
        body.get("tool_choice"),
        body.get("response_format"),
        parse_stream_options(body),
        tgi_client=is_tgi_client_body(body),
    )


def is_tgi_client_body(body: dict[str, Any]) -> bool:
    """Whether ``body`` has exactly the keys PyPI ``text-generation`` 0.7.0's ``chat()`` sends (TGI's own,
    deprecated client, tgi-compat 9.1). Its chat stream then ends without OpenAI's ``data: [DONE]``, which that
    client json-decodes like every ``data:`` line (JSONDecodeError after the last chunk, sync and async). The
    ``openai`` client sends only the fields given, never this set (``repetition_penalty`` is not OpenAI's)."""
    return frozenset(body) == _TGI_CLIENT_CHAT_KEYS


def _parse_messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise deserialize_error(f"messages: invalid type: {unexpected(raw)}, expected a sequence")
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise deserialize_error(
                f"messages[{i}]: invalid type: {unexpected(message)}, expected struct Message"
            )
        if "role" not in message:
            raise deserialize_error(f"messages[{i}]: missing field `role`")
        check_value(f"messages[{i}].role", "string", False, message["role"])
        content = message.get("content")
        if content is not None and not (isinstance(content, str) or _content_parts(content)):
            raise deserialize_error(
                f"messages[{i}].content: data did not match any variant of untagged enum " "MessageContent"
            )
    return raw


def _content_parts(content: Any) -> bool:
    """Whether ``content`` is a list of TGI's content parts: ``{"type": "text", "text": str}`` or
    ``{"type": "image_url", "image_url": {"url": str}}`` (anything else, e.g. an audio part or a bare string,
    fails TGI's deserialization rather than being dropped)."""
    if not isinstance(content, list):
        return False
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            continue
        image = part.get("image_url") if kind == "image_url" else None
        if not (isinstance(image, dict) and isinstance(image.get("url"), str)):
            return False
    return True


def chat_parameters(
    req: ChatRequest,
    grammar: dict[str, Any] | None = None,
    vocab_size: int | None = None,
    max_top_logprobs: int = MAX_TOP_LOGPROBS,
) -> GenerateParameters:
    """TGI's mapping: temperature 0 → greedy (else sampling), repetition_penalty = presence_penalty + 2,
    top_n_tokens = top_logprobs (checked by :func:`check_top_logprobs` against ``max_top_logprobs``, the
    router's ``max_top_n_tokens``), details always on, a ``model`` other than ``tgi`` becomes ``adapter_id``;
    plus vLLM's sampling fields (:mod:`router_py.http.openai_sampling`; ``logit_bias`` ids checked against
    ``vocab_size`` when given). Raises HttpError 422 (validation)."""
    check_top_logprobs(req.get("top_logprobs"), req.logprobs, max_top_logprobs)
    prompt_k = check_prompt_logprobs(req.get("prompt_logprobs"), req.stream, max_top_logprobs)
    temperature = req.get("temperature")
    do_sample = not (temperature is not None and temperature == 0.0)
    presence = req.get("presence_penalty")
    model = req.get("model")
    max_new_tokens = _first_given(req.get("max_completion_tokens"), req.get("max_tokens"))
    return GenerateParameters(
        temperature=temperature if do_sample else None,
        repetition_penalty=presence + 2.0 if presence is not None else req.get("repetition_penalty"),
        frequency_penalty=req.get("frequency_penalty"),
        top_p=openai_top_p(req.get("top_p")),
        top_k=vllm_top_k(req.get("top_k")) if do_sample else None,  # NOTE: see vllm_top_k
        do_sample=do_sample,
        max_new_tokens=max_new_tokens,
        stop=openai_stops(req.get("stop")),
        details=True,
        seed=req.get("seed"),
        ignore_eos=bool(req.get("ignore_eos")),
        top_n_tokens=alternatives_asked(req.get("top_logprobs"), prompt_k),
        decoder_input_details=prompt_k is not None,
        adapter_id=model if model is not None and model != "tgi" else None,
        grammar=grammar,
        skip_special_tokens=skip_special_tokens(req.get("skip_special_tokens")),
        **vllm_sampling(req.get, max_new_tokens, vocab_size),
    )


def vllm_top_k(top_k: int | None) -> int | None:
    """vLLM's ``top_k`` on the OpenAI routes, where 0 and -1 mean no top-k; TGI's must be positive. The routes
    drop it at temperature 0, which vLLM makes greedy whatever its top_k: sent on, the shard would sample
    (TGI's rule, any warper samples)."""
    return top_k if top_k is not None and top_k > 0 else None


def openai_stops(stop: list[str] | None) -> tuple[str, ...]:
    """OpenAI's ``stop`` strings without empty ones, which stop nothing (``openai_stop.StopText`` skips
    them too). Sent on, the shard's TGI rule (the text *ends with* it) ended every generation after its first
    token."""
    return tuple(s for s in stop or () if s)


def openai_top_p(top_p: float | None) -> float | None:
    """OpenAI's ``top_p`` is in (0, 1] and 1 (its default, which many clients send) means off; TGI's must be
    below 1, so 1 is off here rather than TGI's 422."""
    return None if top_p == 1.0 else top_p


def check_top_logprobs(top_logprobs: int | None, logprobs: bool, limit: int) -> None:
    """OpenAI's ``top_logprobs`` (alternatives per token, TGI's ``top_n_tokens``): in 0..``limit``, and
    above 0 only with ``logprobs: true``, as OpenAI and vLLM require (0 or null without it is accepted, as in
    vLLM). Raises HttpError 422 (validation), before any stream starts."""
    if top_logprobs is None:
        return
    if not 0 <= top_logprobs <= limit:
        raise validation_error(f"`top_logprobs` must be >= 0 and <= {limit}. Given: {top_logprobs}")
    if top_logprobs > 0 and not logprobs:
        raise validation_error(
            "when using `top_logprobs`, `logprobs` must be set to true. "
            f"Given: `top_logprobs` {top_logprobs} without `logprobs`"
        )


def _first_given(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def openai_finish_reason(reason: str) -> str:
    """OpenAI's finish reasons are ``stop`` (EOS or a stop string), ``length`` and ``tool_calls``; TGI's
    ``stop_sequence`` is not one of them (vLLM says ``stop``)."""
    return "stop" if reason in ("eos_token", "stop_sequence") else reason


def token_label(token: Token, as_ids: bool) -> str:
    """How logprobs name ``token``: its text, or ``token_id:N`` with vLLM's ``return_tokens_as_token_ids``
    (exact ids for clients that send tokens back, whatever their text decodes to)."""
    return f"token_id:{token.id}" if as_ids else token.text


def _logprob_entry(token: Token, top: list[Token], as_ids: bool) -> dict[str, Any]:
    return {
        "token": token_label(token, as_ids),
        "logprob": token.logprob,
        "top_logprobs": [{"token": token_label(t, as_ids), "logprob": t.logprob} for t in top],
    }


def chat_logprobs(tokens: list[Token], tops: list[list[Token]], as_ids: bool = False) -> dict[str, Any]:
    padded = tops if tops else [[] for _ in tokens]
    return {"content": [_logprob_entry(t, top, as_ids) for t, top in zip(tokens, padded)]}


def chat_choice(
    index: int, end: EndEvent, logprobs: dict[str, Any] | None, message: dict[str, Any] | None = None,
    finish_reason: str | None = None,
) -> dict[str, Any]:
    """One choice of a ``chat.completion``; ``message`` / ``finish_reason`` replace the plain text answer (tool
    calls)."""
    return {
        "index": index,
        "message": message or {"role": "assistant", "content": end.generated_text},
        "logprobs": logprobs,
        "finish_reason": finish_reason or openai_finish_reason(end.finish_reason),
    }


def chat_completion(
    config: RouterConfig, created: int, choices: list[dict[str, Any]], prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """A ``chat.completion`` of ``choices`` (:func:`chat_choice`); the prompt is counted once, the choices'
    tokens together (OpenAI's and vLLM's usage)."""
    return {
        "object": "chat.completion",
        "id": "",
        "created": created,
        "model": config.model_id,
        "system_fingerprint": system_fingerprint(config),
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    }


def _with_tool_calls(delta: dict[str, Any]) -> dict[str, Any]:
    """A text delta with ``"tool_calls": null`` (a tool delta is unchanged). PyPI ``text-generation``
    0.7.0's ``ChoiceDelta`` declares ``tool_calls`` Optional without a default, so pydantic requires the key;
    the ``openai`` client and huggingface_hub read null as no tool calls. Tool deltas keep OpenAI's shape, a
    list of calls, which that client's single ``ChoiceDeltaToolCall`` cannot parse."""
    return delta if "tool_calls" in delta else {**delta, "tool_calls": None}


class StreamRole:
    """Sends ``delta.role`` in a chat stream's first choice chunk only, as OpenAI and vLLM do. The ``openai``
    client's stream helper (``client.chat.completions.stream``, the one ``parse`` streams with) concatenates
    every string field of the deltas, so TGI's role in each chunk made the final message's role
    ``assistantassistant...``. PyPI text-generation 0.7.0's ``ChoiceDelta`` requires a role in every delta
    (``every_chunk``: its body, :func:`is_tgi_client_body`); huggingface_hub reads a missing one as None."""

    def __init__(self, every_chunk: bool = False) -> None:
        self.every_chunk = every_chunk
        self._sent = False

    def apply(self, chunk: dict[str, Any]) -> dict[str, Any]:
        """``chunk`` (a :func:`chat_chunk`), its role dropped after the first chunk with a choice."""
        if chunk["choices"]:
            if self._sent and not self.every_chunk:
                chunk["choices"][0]["delta"].pop("role", None)
            self._sent = True
        return chunk


def chat_chunk(
    config: RouterConfig,
    created: int,
    event: TokenEvent | None,
    logprobs: bool,
    usage_body: dict[str, int] | None,
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    index: int = 0,
    as_ids: bool = False,
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` of choice ``index``; ``event`` None makes the usage-only chunk
    (``choices: []``); ``delta`` / ``finish_reason`` replace the token's text delta (tool calls); ``as_ids``:
    logprobs name tokens by id (:func:`token_label`)."""
    choices = []
    if event is not None:
        finish = openai_finish_reason(event.finish_reason) if isinstance(event, EndEvent) else None
        choices.append(
            {
                "index": index,
                # NOTE: TGI streams special tokens (EOS) as empty content
                "delta": _with_tool_calls(delta or {"role": "assistant", "content": token_text(event.token)}),
                "logprobs": chat_logprobs([event.token], [list(event.top_tokens)], as_ids) if logprobs else None,
                "finish_reason": finish_reason or finish,
            }
        )
    return {
        "object": "chat.completion.chunk",
        "id": "",
        "created": created,
        "model": config.model_id,
        "system_fingerprint": system_fingerprint(config),
        "choices": choices,
        "usage": usage_body,
    }
