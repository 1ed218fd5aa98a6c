"""TGI-native generation routes: ``POST /`` (compat), ``/generate``, ``/generate_stream``, ``/tokenize`` and
``/vertex``. Order of checks as TGI: deserialize (framework 422) → count → best_of → permit (429) → validate
(422).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any

from opentelemetry.context import Context
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from router_py import tracing
from router_py.http.grammar import with_grammar
from router_py.http.errors import (
    HttpError, deserialize_error, from_infer_error, incomplete_generation, validation_error,
)
from router_py.http.generation_runner import (
    FinishedSequence,
    Timings,
    gather_or_cancel,
    generate,
    generate_best_of,
)
from router_py.backend_api import EndEvent, InferError, PrefillTokens, TokenEvent, ValidRequest
from router_py.http.responses import (
    generate_response,
    stream_final_event,
    stream_headers,
    stream_token_event,
    timing_headers,
)
from router_py.http.routes_common import (
    AppState, now, read_json, request_namespace, request_session, state_of,
)
from router_py.http.special_text import SpecialText
from router_py.http.sse import sse_response, tgi_event
from router_py.http.validation import (
    GenerateParameters,
    GenerateRequest,
    parse_generate_request,
    parse_parameters,
    unexpected,
)


@dataclass
class StreamRun:
    """A validated streaming request, when validation finished, and its prompt's tokens once they came (only
    for ``decoder_input_details``, which TGI's own stream route refuses; OpenAI's echo with logprobs asks)."""

    valid: ValidRequest
    validated_at: float
    prefill: PrefillTokens | None = None

    def timings(self, start: float, end: EndEvent) -> Timings:
        return Timings.of(start, self.validated_at, end, end.generated_tokens, now())


def return_full_text(state: AppState, params: GenerateParameters, compat: bool) -> bool:
    """As asked; else false, except on ``/`` for text-generation (or unknown-pipeline) models."""
    if params.return_full_text is not None:
        return params.return_full_text
    tag = state.config.model_pipeline_tag
    return compat and (tag is None or tag == "text-generation")


async def run_generate(
    state: AppState,
    req: GenerateRequest,
    namespace: str,
    start: float,
    traceparent: Context | None = None,
    add_special_tokens: bool = True,
    span_name: str = "generate",
    cut_stops: bool = False,
    include_stop: bool = False,
) -> tuple[FinishedSequence, list[FinishedSequence], Timings]:
    """Validate and run a non-streamed request (best_of included); records the request metrics except the
    request count (the caller's, once per HTTP request). ``cut_stops``: OpenAI's stop strings
    (:func:`router_py.http.generation_runner.generate`)."""
    best_of = req.parameters.best_of if req.parameters.best_of is not None else 1
    with tracing.span(span_name, parent=traceparent, inputs_chars=len(req.inputs)) as span:
        if best_of > 1:
            state.validator.validate_best_of(best_of)
        sequences = max(best_of, 1)
        state.permits.acquire(sequences)
        try:
            valid = await state.validator.validate(req, namespace, add_special_tokens)
            valid = await with_grammar(valid, req.parameters.grammar, state.config.disable_grammar_support)
            validated = now()
            state.record_validated(valid.input_length, valid.stopping.max_new_tokens)
            if best_of > 1:
                gen, others = await generate_best_of(state.backend, valid, best_of, cut_stops, include_stop)
            else:
                gen, others = await generate(state.backend, valid, cut_stops, include_stop), []
        finally:
            state.permits.release(sequences)
        timings = Timings.of(start, validated, gen.end, gen.end.generated_tokens, now())
        tracing.set_attributes(span, seed=gen.end.seed, total_time=timings.total, queue_time=timings.queue)
    state.record_success(gen, timings)
    return gen, others, timings


async def respond_generate(state: AppState, request: Request, req: GenerateRequest, compat: bool) -> Response:
    start = now()
    state.metrics.inc("tgi_request_count")
    namespace = await request_namespace(request)
    req = replace(req, session=await request_session(request))
    parent = tracing.parent_from_headers(request.headers)
    name = "compat_generate" if compat else "generate"
    gen, others, timings = await run_generate(state, req, namespace, start, parent, span_name=name)
    p = req.parameters
    full = return_full_text(state, p, compat)
    body = generate_response(gen, req.inputs, full, p.details or p.decoder_input_details, others)
    headers = timing_headers(
        state.config.compute_type,
        timings,
        gen.request.input_length,
        gen.end.generated_tokens,
        len(req.inputs),
    )
    return JSONResponse([body] if compat else body, headers=headers)


async def stream_generate(state: AppState, request: Request, req: GenerateRequest, compat: bool) -> Response:
    """SSE of StreamResponse; every error after deserialization is ONE error event with status 200."""
    namespace = await request_namespace(request)
    req = replace(req, session=await request_session(request))
    parent = tracing.parent_from_headers(request.headers)
    p = req.parameters
    full = return_full_text(state, p, compat)
    start = now()
    state.metrics.inc("tgi_request_count")

    async def events() -> AsyncIterator[str]:
        with tracing.span("generate_stream", parent=parent):
            try:
                async for event in _stream_body(state, req, namespace, full, start):
                    yield event
            except HttpError as err:
                state.record_failure(err)
                yield tgi_event(err.body())

    return sse_response(events(), stream_headers(state.config.compute_type, len(req.inputs)))


async def open_stream(
    state: AppState, req: GenerateRequest, namespace: str, add_special_tokens: bool = True
) -> AsyncIterator[tuple[StreamRun, TokenEvent]]:
    """Permit (429), validation (422), then the backend's token events (a prefill event kept on the run).
    Raises HttpError, including incomplete_generation_stream when the backend ends without an EndEvent."""
    state.permits.acquire()
    try:
        valid = await state.validator.validate(req, namespace, add_special_tokens)
        valid = await with_grammar(valid, req.parameters.grammar, state.config.disable_grammar_support)
        run = StreamRun(valid, now())
        state.record_validated(run.valid.input_length, run.valid.stopping.max_new_tokens)
        spelled = None if valid.skip_special_tokens else SpecialText()
        # NOTE: the backend's stream read here, not through stream_events: one generator less per token
        async with aclosing(state.backend.generate_stream(run.valid)) as events:
            try:
                async for event in events:
                    if spelled is not None:
                        event = spelled(event)
                    if isinstance(event, PrefillTokens):
                        run.prefill = event
                        continue
                    yield run, event
                    if isinstance(event, EndEvent):
                        return
            except InferError as err:
                raise from_infer_error(err) from err
        raise incomplete_generation(stream=True)
    finally:
        state.permits.release()


async def _stream_body(
    state: AppState, req: GenerateRequest, namespace: str, full: bool, start: float
) -> AsyncIterator[str]:
    p = req.parameters
    if (p.best_of if p.best_of is not None else 1) != 1:
        raise validation_error("`best_of` != 1 is not supported when streaming tokens")
    if p.decoder_input_details:
        raise validation_error("`decoder_input_details` == true is not supported when streaming tokens")
    index = 0
    async for run, event in open_stream(state, req, namespace):
        index += 1
        if isinstance(event, EndEvent):
            final = stream_final_event(index, event, req.inputs, run.valid.input_length, full, p.details)
            yield tgi_event(final)
            state.record_success(FinishedSequence(run.valid, event), run.timings(start, event))
        else:
            yield tgi_event(stream_token_event(index, event))


async def compat_generate(request: Request) -> Response:
    state = state_of(request)
    req = parse_generate_request(await read_json(request), compat=True)
    if req.stream:
        return await stream_generate(state, request, req, compat=True)
    return await respond_generate(state, request, req, compat=True)


async def generate_route(request: Request) -> Response:
    req = parse_generate_request(await read_json(request))
    return await respond_generate(state_of(request), request, req, compat=False)


async def generate_stream_route(request: Request) -> Response:
    req = parse_generate_request(await read_json(request))
    return await stream_generate(state_of(request), request, req, compat=False)


async def tokenize_route(request: Request) -> Response:
    """``[{id, text, start, stop}]`` with byte offsets; ``truncate`` keeps the last tokens, as in validation."""
    state = state_of(request)
    req = parse_generate_request(await read_json(request))
    if not req.inputs:
        raise validation_error("`inputs` cannot be empty")
    tokens = await state.validator.on_workers(state.tokenizer.encode_with_offsets, req.inputs)
    truncate = req.parameters.truncate
    if truncate is not None and len(tokens) > truncate:
        tokens = tokens[-truncate:]
    return JSONResponse(tokens)


async def vertex_route(request: Request) -> Response:
    """``{instances:[{inputs, parameters?}]}`` → ``{predictions:[generated_text]}``, instances run
    concurrently. A single instance carries the ``x-session-id`` session as ``/generate`` does; several are
    separate conversations and name none (as ``/v1/completions`` with several prompts)."""
    state = state_of(request)
    body = await read_json(request)
    instances = _vertex_instances(body)
    start = now()
    # NOTE: TGI counts the call, then each instance again (generate_internal)
    state.metrics.inc("tgi_request_count", 1 + len(instances))
    if not instances:  # NOTE: TGI answers this before generating, counted as a call and not as a failure
        return HttpError(422, "Input validation error", "Input validation error").response()
    namespace = await request_namespace(request)
    if len(instances) == 1:
        instances = [replace(instances[0], session=await request_session(request))]
    parent = tracing.parent_from_headers(request.headers)
    with tracing.span("vertex_compatibility", parent=parent):  # NOTE: the instances' tasks inherit it
        results = await gather_or_cancel(*(run_generate(state, r, namespace, start) for r in instances))
    return JSONResponse({"predictions": [gen.end.generated_text for gen, _, _ in results]})


def _vertex_instances(body: Any) -> list[GenerateRequest]:
    """Vertex instances; an instance without ``parameters`` gets ``GenerateParameters::default()`` (greedy)."""
    if not isinstance(body, dict):
        raise deserialize_error(f"invalid type: {unexpected(body)}, expected struct VertexRequest")
    if "instances" not in body:
        raise deserialize_error("missing field `instances`")
    if not isinstance(body["instances"], list):
        raise deserialize_error(
            f"instances: invalid type: {unexpected(body['instances'])}, expected a sequence"
        )
    out = []
    for i, item in enumerate(body["instances"]):
        inputs = parse_generate_request(item).inputs
        params = item.get("parameters")
        parsed = parse_parameters(params, f"instances[{i}].parameters") if params is not None else None
        out.append(GenerateRequest(inputs, parsed or GenerateParameters()))
    return out
