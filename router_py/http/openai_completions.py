"""OpenAI (legacy) completions over TGI's generation (tgi-compat 3.8): CompletionRequest → one GenerateRequest
per prompt, and the ``text_completion`` bodies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from router_py.router_config import RouterConfig
from router_py.http.errors import HttpError, deserialize_error
from router_py.backend_api import EndEvent
from router_py.http.openai_chat import (
    check_single_choice, openai_finish_reason, system_fingerprint, usage, vllm_top_k
)
from router_py.http.openai_sampling import VLLM_SAMPLING_FIELDS, vllm_sampling
from router_py.http.validation import GenerateParameters, check_value, unexpected

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
    "stop": ("strings", True),
    "n": ("u32", True),
    "ignore_eos": ("bool", True),  # vLLM's extension: generate past EOS up to max_tokens
    "top_k": ("i32", True),  # vLLM's extension; 0 or -1: off, as there
    **VLLM_SAMPLING_FIELDS,
}


@dataclass(frozen=True)
class CompletionRequest:
    prompts: list[str]
    fields: dict[str, Any]
    include_usage: bool = False  # stream_options.include_usage: a usage-only chunk before [DONE]

    def get(self, name: str) -> Any:
        return self.fields.get(name)

    @property
    def stream(self) -> bool:
        return bool(self.fields.get("stream"))


def parse_completion_request(body: Any, max_client_batch_size: int) -> CompletionRequest:
    """Deserialize, then TGI's two handler checks: ``suffix`` and the prompt count (422 with their own
    error_type)."""
    if not isinstance(body, dict):
        raise deserialize_error(f"invalid type: {unexpected(body)}, expected struct CompletionRequest")
    fields = {
        k: check_value(k, *_COMPLETION_FIELDS[k], v) for k, v in body.items() if k in _COMPLETION_FIELDS
    }
    if "prompt" not in body:
        raise deserialize_error("missing field `prompt`")
    prompts = _prompts(body["prompt"])
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
    options = body.get("stream_options")
    include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
    return CompletionRequest(prompts, fields, include_usage)


def _prompts(raw: Any) -> list[str]:
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and all(isinstance(p, str) for p in raw):
        return list(raw)
    raise deserialize_error("prompt: data did not match any variant of untagged enum Prompt")


def completion_parameters(req: CompletionRequest, vocab_size: int | None = None) -> GenerateParameters:
    """Temperature 0 → greedy, else sampling; details on so finish reasons and counts come back; vLLM's
    sampling fields as on the chat route. Raises HttpError 422 (validation)."""
    check_single_choice(req.get("n"))
    temperature = req.get("temperature")
    do_sample = not (temperature is not None and temperature == 0.0)
    model = req.get("model")
    return GenerateParameters(
        temperature=temperature if do_sample else None,
        repetition_penalty=req.get("repetition_penalty"),
        frequency_penalty=req.get("frequency_penalty"),
        top_p=req.get("top_p"),
        top_k=vllm_top_k(req.get("top_k")),
        do_sample=do_sample,
        max_new_tokens=req.get("max_tokens"),
        stop=tuple(req.get("stop") or ()),
        details=True,
        seed=req.get("seed"),
        ignore_eos=bool(req.get("ignore_eos")),
        adapter_id=model if model is not None and model != "tgi" else None,
        **vllm_sampling(req.get, req.get("max_tokens"), vocab_size),
    )


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
    config: RouterConfig, created: int, ends: list[EndEvent], prompt_tokens: int
) -> dict[str, Any]:
    choices = [
        {
            "index": i,
            "text": end.generated_text,
            "logprobs": None,
            "finish_reason": openai_finish_reason(end.finish_reason),
        }
        for i, end in enumerate(ends)
    ]
    completion_tokens = sum(end.generated_tokens for end in ends)
    return {
        **_envelope(config, created),
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    }


def completion_chunk(
    config: RouterConfig, created: int, index: int, text: str, finish: str | None
) -> dict[str, Any]:
    choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
    return {**_envelope(config, created), "choices": [choice]}
