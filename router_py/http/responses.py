"""TGI-native response bodies and headers (tgi-compat 3.3, 3.4): ``GenerateResponse``, ``StreamResponse`` and
the ``x-*`` headers. Keys that TGI omits when empty are omitted here too."""

from __future__ import annotations

from typing import Any

from router_py.http.generation_runner import FinishedSequence, Timings
from router_py.backend_api import EndEvent, Token, TokenEvent


def token_json(token: Token) -> dict[str, Any]:
    return {"id": token.id, "text": token.text, "logprob": token.logprob, "special": token.special}


def prefill_json(token: Token) -> dict[str, Any]:
    return {"id": token.id, "text": token.text, "logprob": token.logprob}


def full_text(inputs: str, generated: str, return_full_text: bool) -> str:
    return inputs + generated if return_full_text else generated


def _sequence_details(gen: FinishedSequence) -> dict[str, Any]:
    out: dict[str, Any] = {
        "finish_reason": gen.end.finish_reason,
        "generated_tokens": gen.end.generated_tokens,
        "seed": gen.end.seed,
        "prefill": [prefill_json(t) for t in gen.prefill],
        "tokens": [token_json(t) for t in gen.tokens],
    }
    if gen.top_tokens:
        out["top_tokens"] = [[token_json(t) for t in step] for step in gen.top_tokens]
    return out


def generate_response(
    gen: FinishedSequence,
    inputs: str,
    return_full_text: bool,
    details: bool,
    others: list[FinishedSequence] | None = None,
) -> dict[str, Any]:
    """``GenerateResponse``: ``details`` present only when asked (details or decoder_input_details)."""
    body: dict[str, Any] = {"generated_text": full_text(inputs, gen.end.generated_text, return_full_text)}
    if not details:
        return body
    body["details"] = _sequence_details(gen)
    if others:
        body["details"]["best_of_sequences"] = [
            {
                "generated_text": full_text(inputs, o.end.generated_text, return_full_text),
                **_sequence_details(o),
            }
            for o in others
        ]
    return body


def stream_token_event(index: int, event: TokenEvent) -> dict[str, Any]:
    """A token event of ``/generate_stream``: ``generated_text`` and ``details`` are explicit nulls."""
    body: dict[str, Any] = {"index": index, "token": token_json(event.token)}
    if event.top_tokens:
        body["top_tokens"] = [token_json(t) for t in event.top_tokens]
    body["generated_text"] = None
    body["details"] = None
    return body


def stream_final_event(
    index: int, event: EndEvent, inputs: str, input_length: int, return_full_text: bool, details: bool
) -> dict[str, Any]:
    body = stream_token_event(index, event)
    body["generated_text"] = full_text(inputs, event.generated_text, return_full_text)
    if details:
        body["details"] = {
            "finish_reason": event.finish_reason,
            "generated_tokens": event.generated_tokens,
            "seed": event.seed,
            "input_length": input_length,
        }
    return body


def timing_headers(
    compute_type: str, timings: Timings, prompt_tokens: int, generated_tokens: int, characters: int
) -> dict[str, str]:
    """TGI's response headers of /generate and /: times in integer ms, x-compute-time in float seconds."""

    def ms(seconds: float) -> str:
        return str(int(seconds * 1000))

    return {
        "x-compute-type": compute_type,
        "x-compute-time": str(timings.total),
        "x-compute-characters": str(characters),
        "x-total-time": ms(timings.total),
        "x-validation-time": ms(timings.validation),
        "x-queue-time": ms(timings.queue),
        "x-inference-time": ms(timings.inference),
        "x-time-per-token": ms(timings.per_token),
        "x-prompt-tokens": str(prompt_tokens),
        "x-generated-tokens": str(generated_tokens),
    }


def stream_headers(compute_type: str, characters: int) -> dict[str, str]:
    return {
        "x-compute-type": compute_type,
        "x-compute-characters": str(characters),
        "X-Accel-Buffering": "no",
        "Cache-Control": "no-cache",
    }
