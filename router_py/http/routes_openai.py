"""OpenAI-compatible routes: ``/v1/chat/completions``, ``/v1/completions``, ``/chat_tokenize``,
``/v1/models``. Chunks are ``data:{json}`` events ending with ``data: [DONE]``; errors while streaming are one
``{"error":{"message","http_status_code"}}`` event, then ``[DONE]``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from opentelemetry.context import Context
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from router_py import tracing
from router_py.chat_template import ChatTemplateError
from router_py.http.errors import HttpError, template_error
from router_py.backend_api import EndEvent, TokenEvent
from router_py.http.openai_chat import (
    ChatRequest,
    StreamRole,
    chat_choice,
    chat_chunk,
    chat_completion,
    chat_logprobs,
    chat_parameters,
    parse_chat_request,
    template_options,
)
from router_py.http.openai_completions import (
    CompletionRequest,
    completion,
    completion_chunk,
    completion_logprobs,
    completion_parameters,
    echoed_prompt,
    parse_completion_request,
    usage_chunk,
)
from router_py.http.openai_chat import openai_finish_reason
from router_py.http.openai_choices import choice_count, choice_requests
from router_py.http.openai_prompt import Prompt
from router_py.http.openai_stop import cut_at_stops, include_stop, token_text
from router_py.http.openai_usage import RunningUsage, usage
from router_py.http.routes_common import (
    AppState, now, read_json, request_namespace, request_session, state_of,
)
from router_py.http.generation_runner import FinishedSequence, gather_or_cancel
from router_py.http.prompt_logprobs import prompt_logprobs_json, trim_alternatives
from router_py.http.routes_generate import StreamRun, open_stream, run_generate
from router_py.http.stream_merge import merge_streams
from router_py.http.structured_outputs import output_grammar
from router_py.http.sse import OPENAI_DONE, TgiEventTemplate, sse_response, tgi_event
from router_py.http.tools import (
    ToolPlan,
    ToolStream,
    parse_output,
    plan_tools,
    template_messages,
    with_tool_prompt,
)
from router_py.http.validation import GenerateParameters, GenerateRequest


def render_chat(state: AppState, req: ChatRequest) -> tuple[str, ToolPlan]:
    """The templated prompt and the request's tool plan; template failures are 422 ``template_error``."""
    plan = plan_tools(req.tools, req.tool_choice, req.response_format, req.get("tool_prompt"))
    plan = replace(plan, grammar=output_grammar(plan.grammar, req.get("structured_outputs")))
    tok = state.tokenizer
    messages = template_messages(req.messages, tok.template_mentions("tool_calls"))
    tools = plan.template_tools
    if plan.calls_tools and tools and not tok.template_mentions("tools"):
        messages, tools = with_tool_prompt(messages, tools, plan.tool_prompt or ""), None
    opts = template_options(req)
    try:
        text = tok.apply_chat_template(
            messages, opts.add_generation_prompt, tools, extra=opts.extra, continue_final=opts.continue_final
        )
        return text, plan
    except ChatTemplateError as exc:
        raise template_error(str(exc)) from exc


def _error_event(err: HttpError) -> str:
    return tgi_event({"error": {"message": err.message, "http_status_code": err.status}})


async def chat_completions_route(request: Request) -> Response:
    state = state_of(request)
    req = parse_chat_request(await read_json(request))
    start = now()
    state.metrics.inc("tgi_request_count")
    prompt, plan = render_chat(state, req)
    state.metrics.inc("tgi_request_count")  # NOTE: TGI counts chat twice: its handler, then generate_internal
    session = await request_session(request)
    params = chat_parameters(req, plan.grammar, state.tokenizer.vocab_size, state.config.max_top_n_tokens)
    n = choice_count(req.get("n"), 1, state.config.max_concurrent_requests)
    include = include_stop(req.get)
    gen_reqs = choice_requests(GenerateRequest(prompt, params, session=session), n)
    namespace = await request_namespace(request)
    parent = tracing.parent_from_headers(request.headers)
    if req.stream:
        return sse_response(_chat_events(state, req, gen_reqs, namespace, start, parent, plan, include), {})
    cut = not plan.calls_tools
    with tracing.span("chat_completions", parent=parent):
        results = await gather_or_cancel(*(
            run_generate(state, r, namespace, start, add_special_tokens=False, cut_stops=cut, include_stop=include)
            for r in gen_reqs
        ))
    # NOTE: prompt_logprobs may have asked the backend for more alternatives than top_logprobs
    gens = [trim_alternatives(gen, req.get("top_logprobs")) for gen, _, _ in results]
    choices = []
    for index, gen in enumerate(gens):
        logprobs = chat_logprobs(gen.tokens, gen.top_tokens, req.tokens_as_ids) if req.logprobs else None
        message, finish = _tool_message(plan, gen.end.generated_text)
        choices.append(chat_choice(index, gen.end, logprobs, message, finish))
    completion_tokens = sum(gen.end.generated_tokens for gen in gens)
    body = chat_completion(state.config, int(time.time()), choices, gens[0].request.input_length, completion_tokens)
    if req.get("prompt_logprobs") is not None:  # NOTE: vLLM's place on chat: the response's, the prompt's
        body["prompt_logprobs"] = prompt_logprobs_json(gens[0], req.get("prompt_logprobs"))
    return JSONResponse(body)


def _tool_message(plan: ToolPlan, text: str) -> tuple[dict | None, str | None]:
    """The assistant message and finish reason of a tool-calling answer (None, None otherwise)."""
    if not plan.calls_tools:
        return None, None
    out = parse_output(text)
    if out.content is not None:
        return {"role": "assistant", "content": out.content}, None
    return {"role": "assistant", "content": None, "tool_calls": out.calls}, "tool_calls"


async def _chat_events(
    state: AppState,
    req: ChatRequest,
    gen_reqs: list[GenerateRequest],
    namespace: str,
    start: float,
    parent: Context | None,
    plan: ToolPlan,
    include: bool = False,
) -> AsyncIterator[str]:
    """The chat stream of the choices (``gen_reqs``, generated side by side); with ``include_usage`` a
    usage-only chunk over all of them follows the last. ``include``: stop strings stay in the text."""
    created = int(time.time())
    counts = [0, 0]
    with tracing.span("chat_completions", parent=parent):
        try:
            streams = [
                _one_chat_stream(state, req, r, namespace, created, plan, index, include)
                for index, r in enumerate(gen_reqs)
            ]
            async for chunk in _merged_chunks(state, streams, start, len(gen_reqs), counts):
                yield chunk
            if req.stream_usage.final:
                yield tgi_event(chat_chunk(state.config, created, None, False, usage(*counts)))
        except HttpError as err:
            state.record_failure(err)
            yield _error_event(err)
    if not req.tgi_client:  # NOTE: text-generation 0.7.0 fails on [DONE] (openai_chat.is_tgi_client_body)
        yield OPENAI_DONE


async def _merged_chunks(
    state: AppState,
    streams: list[AsyncIterator[str | tuple[StreamRun, EndEvent]]],
    start: float,
    n: int,
    counts: list[int],
) -> AsyncIterator[str]:
    """The chunks of the choices' ``streams`` (each prompt's ``n`` in a row), as they come; every finished
    choice is recorded, and ``counts`` ends as [prompt tokens, each prompt counted once, completion tokens]."""
    async for index, item in merge_streams(streams):
        if isinstance(item, str):
            yield item
            continue
        run, event = item
        state.record_success(FinishedSequence(run.valid, event), run.timings(start, event))
        if index % n == 0:
            counts[0] += run.valid.input_length
        counts[1] += event.generated_tokens


async def _one_chat_stream(
    state: AppState,
    req: ChatRequest,
    gen_req: GenerateRequest,
    namespace: str,
    created: int,
    plan: ToolPlan,
    index: int,
    include: bool = False,
) -> AsyncIterator[str | tuple[StreamRun, EndEvent]]:
    """One choice's chunks (strings), then its run and EndEvent; with ``continuous_usage_stats`` every chunk
    carries the choice's running usage (:mod:`router_py.http.openai_usage`)."""
    calls = ToolStream() if plan.calls_tools else None
    p = gen_req.parameters
    stops = () if plan.calls_tools else p.stop  # NOTE: a tool call's text is the grammar's, never cut
    running: RunningUsage | None = None
    role = StreamRole(every_chunk=req.tgi_client)
    stream = open_stream(state, gen_req, namespace, add_special_tokens=False)
    async for run, event, text in cut_at_stops(stream, stops, p.min_tokens, include):
        if req.stream_usage.continuous and running is None:
            running = RunningUsage(run.valid.input_length)
        now_usage = running.step(event) if running is not None else None
        if calls is None:
            delta = {"role": "assistant", "content": text}
            chunks = [chat_chunk(state.config, created, event, req.logprobs, now_usage, delta, index=index,
                                 as_ids=req.tokens_as_ids)]
        else:
            chunks = _tool_chunks(state, created, calls, event, now_usage, index)
        for chunk in chunks:
            yield tgi_event(role.apply(chunk))
        if isinstance(event, EndEvent):
            yield run, event


def _tool_chunks(
    state: AppState, created: int, calls: ToolStream, event, usage_body: dict[str, int] | None = None,
    index: int = 0,
) -> list[dict]:
    """The chunks of one token of choice ``index``'s tool-calling stream: tool_calls deltas (none while the
    name is not known yet); the last token's chunk carries finish_reason ``tool_calls`` (``stop``/``length``
    for a text answer). Each carries ``usage_body`` (the running usage, or None)."""
    deltas = calls.push(token_text(event.token))
    if not isinstance(event, EndEvent):
        return [chat_chunk(state.config, created, event, False, usage_body, d, index=index) for d in deltas]
    deltas += calls.finish()
    finish = "tool_calls" if calls.name not in (None, "no_tool") else None
    last = deltas.pop() if deltas else {"role": "assistant", "content": ""}
    head = [
        chat_chunk(state.config, created, TokenEvent(event.token), False, usage_body, d, index=index)
        for d in deltas
    ]
    return head + [chat_chunk(state.config, created, event, False, usage_body, last, finish, index)]


async def completions_route(request: Request) -> Response:
    state = state_of(request)
    body = await read_json(request)
    start = now()
    try:
        req = parse_completion_request(body, state.config.max_client_batch_size, state.tokenizer.vocab_size)
    except HttpError:  # TGI counts the call before its suffix / prompt-count checks
        state.metrics.inc("tgi_request_count")
        raise
    # NOTE: TGI counts the call, then each prompt again (generate_internal / generate_stream_internal)
    state.metrics.inc("tgi_request_count", 1 + len(req.prompts))
    params = completion_parameters(req, state.tokenizer.vocab_size)
    n = choice_count(req.get("n"), len(req.prompts), state.config.max_concurrent_requests)
    include = include_stop(req.get)
    # NOTE: several prompts in one call are separate conversations, not one session's turns
    session = await request_session(request) if len(req.prompts) == 1 else None
    gen_reqs = [r for prompt in req.prompts for r in choice_requests(_generate_request(prompt, params, session), n)]
    namespace = await request_namespace(request)
    parent = tracing.parent_from_headers(request.headers)
    if req.stream:
        return sse_response(_completion_events(state, req, gen_reqs, n, namespace, start, parent, include), {})
    with tracing.span("completions", parent=parent):  # NOTE: the prompts' tasks inherit it as their parent
        results = await gather_or_cancel(
            *(run_generate(state, r, namespace, start, cut_stops=True, include_stop=include) for r in gen_reqs)
        )
    gens = [gen if not req.prompt_only else _prompt_alone(gen) for gen, _, _ in results]
    prompt_tokens = sum(gen.request.input_length for gen in gens[::n])  # NOTE: each prompt counted once
    # NOTE: the echoed prompt is the validated one: a token-id prompt's is its ids decoded
    texts = [gen.request.inputs + gen.end.generated_text for gen in gens] if req.echo else None
    logprobs = [
        _choice_logprobs(req, gen, req.prompts[i // n].ids is not None) for i, gen in enumerate(gens)
    ] if req.logprobs is not None else None
    scores = None if req.prompt_logprobs is None else [prompt_logprobs_json(g, req.prompt_logprobs) for g in gens]
    ends = [gen.end for gen in gens]
    return JSONResponse(completion(state.config, int(time.time()), ends, prompt_tokens, texts, logprobs, scores))


def _prompt_alone(gen: FinishedSequence) -> FinishedSequence:
    """``gen`` as vLLM answers ``echo`` with ``max_tokens`` 0: nothing generated (the one token dropped)."""
    return replace(gen, end=_nothing_generated(gen.end), tokens=[], top_tokens=[])


def _nothing_generated(end: EndEvent) -> EndEvent:
    return replace(end, generated_text="", generated_tokens=0, finish_reason="length")


def _choice_logprobs(req: CompletionRequest, gen: FinishedSequence, ids_prompt: bool) -> dict[str, Any]:
    """A choice's logprobs object: its generated tokens', after its prompt's when echoed with logprobs."""
    k = req.logprobs or 0
    gen = trim_alternatives(gen, k)  # NOTE: prompt_logprobs may have asked the backend for more alternatives
    generated_tops = gen.top_tokens or [[] for _ in gen.tokens]
    if not req.echo_logprobs:
        return completion_logprobs(gen.tokens, generated_tops, len(gen.request.inputs) if req.echo else 0,
                                   req.tokens_as_ids)
    tokens, tops = echoed_prompt(gen.prefill, gen.prefill_top, ids_prompt, k)
    return completion_logprobs(tokens + gen.tokens, tops + generated_tops, 0, req.tokens_as_ids)


def _generate_request(prompt: Prompt, params: GenerateParameters, session: str | None) -> GenerateRequest:
    """A text prompt's request, or a token-id prompt's (its ids taken as they are: no BOS, no tokenizing)."""
    return GenerateRequest(prompt.text or "", params, session=session, input_ids=prompt.ids)


async def _completion_events(
    state: AppState,
    req: CompletionRequest,
    gen_reqs: list[GenerateRequest],
    n: int,
    namespace: str,
    start: float,
    parent: Context | None = None,
    include: bool = False,
) -> AsyncIterator[str]:
    """The choices (``gen_reqs``: each prompt's ``n`` in a row) are generated side by side, each chunk tagged
    with its choice's index; with ``include_usage`` a usage-only chunk over all of them follows the last.
    ``include``: stop strings stay in the text."""
    with tracing.span("completions", parent=parent):  # NOTE: a span open across yields, as chat's
        created = int(time.time())
        counts = [0, 0]
        try:
            streams = [
                _one_completion_stream(state, req, r, namespace, created, index, include)
                for index, r in enumerate(gen_reqs)
            ]
            async for chunk in _merged_chunks(state, streams, start, n, counts):
                yield chunk
            if req.stream_usage.final:
                yield tgi_event(usage_chunk(state.config, created, usage(*counts)))
        except HttpError as err:
            state.record_failure(err)
            yield _error_event(err)
        yield OPENAI_DONE


async def _one_completion_stream(
    state: AppState, req: CompletionRequest, gen_req: GenerateRequest, namespace: str, created: int, index: int,
    include: bool = False,
) -> AsyncIterator[str | tuple[StreamRun, EndEvent]]:
    """One choice's chunks (strings), then its run and EndEvent. With ``echo`` the first chunk starts with the
    (validated) prompt (and is the prompt alone with ``max_tokens`` 0); with ``logprobs`` each chunk carries its
    token's (the first also the echoed prompt's), offsets counted in the choice's text; with
    ``continuous_usage_stats`` each carries this choice's running usage."""
    # NOTE: without logprobs and usage a token's chunk is the same but for its text: rendered once
    chunk = TgiEventTemplate(lambda text: completion_chunk(state.config, created, index, text, None))
    offset: int | None = None  # where the next token's text starts in the choice's text (None: no token yet)
    running: RunningUsage | None = None
    p = gen_req.parameters
    stream = open_stream(state, gen_req, namespace)
    async for run, event, text in cut_at_stops(stream, p.stop, p.min_tokens, include):
        if req.prompt_only:  # NOTE: max_new_tokens 1, so this is the EndEvent
            event, text, tokens, tops = _nothing_generated(event), "", [], []
        else:
            tokens, tops = [event.token], [list(event.top_tokens)]
        if offset is None:
            prefix = run.valid.inputs if req.echo else ""
            text, offset = prefix + text, len(prefix)
            running = RunningUsage(run.valid.input_length) if req.stream_usage.continuous else None
            if req.echo_logprobs and run.prefill is not None:
                echoed, echoed_tops = echoed_prompt(run.prefill.tokens, run.prefill.top_tokens,
                                                    gen_req.input_ids is not None, req.logprobs or 0)
                tokens, tops, offset = echoed + tokens, echoed_tops + tops, 0
        logprobs = None
        if req.logprobs is not None:
            logprobs = completion_logprobs(tokens, tops, offset, req.tokens_as_ids)
            offset += sum(len(token_text(t)) for t in tokens)
        now_usage = running.step(event) if running is not None else None
        ended = isinstance(event, EndEvent)
        if not ended and logprobs is None and now_usage is None:
            yield chunk.render(text)
            continue
        finish = openai_finish_reason(event.finish_reason) if ended else None
        yield tgi_event(completion_chunk(state.config, created, index, text, finish, logprobs, now_usage))
        if ended:
            yield run, event


async def chat_tokenize_route(request: Request) -> Response:
    """``{tokenize_response: [{id, text, start, stop}], templated_text}`` of the templated chat."""
    state = state_of(request)
    req = parse_chat_request(await read_json(request))
    state.metrics.inc("tgi_request_count")
    text, _ = render_chat(state, req)
    tokens = await state.validator.on_workers(state.tokenizer.encode_with_offsets, text, False)
    return JSONResponse({"tokenize_response": tokens, "templated_text": text})


async def models_route(request: Request) -> Response:
    """TGI's model list, plus vLLM's ``max_model_len`` (prompt and generated tokens together: the settled
    ``max_total_tokens``), which code written for vLLM reads to size its prompts."""
    config = state_of(request).config
    model = {
        "id": config.model_id,
        "object": "model",
        "created": 0,
        "owned_by": config.model_id,
        "max_model_len": config.max_total_tokens,
    }
    return JSONResponse({"object": "list", "data": [model]})
