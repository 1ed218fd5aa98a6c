"""An open-loop load generator for any TGI- or OpenAI-compatible server (ours, TGI, vLLM, SGLang).

Requests are sent at their arrival times whatever the server's state (open loop: a slow server builds a queue,
it does not slow the clients), over TGI's ``/generate_stream`` or OpenAI's ``/v1/completions`` with streaming.
Each request's record holds its time to first token, inter-token latencies, end-to-end latency and error;
over ``/v1/completions`` it asks for the final ``usage`` chunk (``stream_options.include_usage``) and takes
the output token count from it where the server sends one (vLLM may merge several tokens into one chunk when
the client lags). When the server exports ``prism_prefix_cache_queried_tokens`` and
``prism_prefix_cache_hit_tokens`` (ours) or ``vllm:prefix_cache_queries`` and ``vllm:prefix_cache_hits``
(vLLM) on ``/metrics``, the hit rate of the run is the ratio of their increments. :func:`run_closed` is the
closed-loop variant: N clients, each sending its next request when its previous one ends; :func:`run_sessions`
replays sessions (chats, agent tasks), each turn sent its think time after the previous turn ends, with the
answer it extends sent back as the server streamed it.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

import aiohttp
from tqdm import tqdm

from bench.metrics import RequestRecord

APIS = ("generate_stream", "completions")
QUERIED, HIT = "prism_prefix_cache_queried_tokens", "prism_prefix_cache_hit_tokens"
# (queried tokens, hit tokens) counter pairs, first present wins: ours, then vLLM's (``_total`` folded away)
COUNTER_PAIRS = ((QUERIED, HIT), ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits"))


@dataclass(frozen=True)
class LoadRequest:
    arrival: float  # seconds after the run starts
    prompt: str
    max_new_tokens: int
    prompt_len: int  # intended prompt tokens (for the records)


@dataclass(frozen=True)
class Turn:
    """A request of a session: ``request`` as the workload wrote it; ``parent``: the index of the earlier turn
    of its session whose prompt and answer it extends, then ``suffix`` (a user message, a tool's result), or
    None for a session's first turn, whose prompt is the request's."""

    request: LoadRequest
    parent: int | None = None
    suffix: str = ""


@dataclass(frozen=True)
class Endpoint:
    url: str  # e.g. http://127.0.0.1:8080
    api: str = "generate_stream"  # generate_stream | completions
    model: str = "tgi"  # OpenAI "model" field

    def __post_init__(self) -> None:
        if self.api not in APIS:
            raise ValueError(f"api must be one of {APIS}")


@dataclass(frozen=True)
class LoadResult:
    records: list[RequestRecord]
    hit_rate: float  # NaN when the server exports no prefix-cache counters
    duration: float


def request_body(endpoint: Endpoint, req: LoadRequest) -> tuple[str, dict[str, object]]:
    """(path, JSON body) of one streamed request; greedy, asking to ignore EOS where the server allows it."""
    if endpoint.api == "generate_stream":
        params = {"max_new_tokens": req.max_new_tokens, "do_sample": False, "details": False}
        return "/generate_stream", {"inputs": req.prompt, "parameters": params}
    body = {"model": endpoint.model, "prompt": req.prompt, "max_tokens": req.max_new_tokens, "stream": True,
            "temperature": 0.0, "ignore_eos": True, "stream_options": {"include_usage": True}}
    return "/v1/completions", body


def parse_event(api: str, line: str) -> tuple[int, bool, str | None]:
    """One SSE line -> (token events it carries, whether the stream ended, error message or None). A
    completions stream ends at ``[DONE]`` (the usage chunk follows the one with ``finish_reason``)."""
    if not line.startswith("data:"):
        return 0, False, None
    data = line[len("data:") :].strip()
    if data == "[DONE]":
        return 0, True, None
    event = json.loads(data)
    if "error" in event:
        return 0, True, str(event["error"])
    if api == "generate_stream":
        return 1, event.get("generated_text") is not None, None
    return (1 if event.get("choices") else 0), False, None


def event_text(api: str, line: str) -> str:
    """The generated text one SSE line carries ("" for none)."""
    if not line.startswith("data:") or line.endswith("[DONE]"):
        return ""
    event = json.loads(line[len("data:") :])
    if api == "generate_stream":
        token = event.get("token") or {}
        return "" if token.get("special") else token.get("text", "")
    return (event.get("choices") or [{}])[0].get("text") or ""


def parse_usage(line: str) -> int | None:
    """``usage.completion_tokens`` of a completions chunk that carries it, else None."""
    if '"completion_tokens"' not in line or not line.startswith("data:"):
        return None
    usage = json.loads(line[len("data:") :]).get("usage") or {}
    tokens = usage.get("completion_tokens")
    return int(tokens) if isinstance(tokens, int) else None


def parse_counters(text: str) -> dict[str, float]:
    """Sum of each Prometheus sample family (labels and a ``_total`` suffix folded into the name)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        name = name.split("{")[0].strip().removesuffix("_total")
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


async def _metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    try:
        async with session.get(url + "/metrics") as resp:
            return parse_counters(await resp.text()) if resp.status == 200 else {}
    except aiohttp.ClientError:
        return {}


def hit_rate_between(before: dict[str, float], after: dict[str, float]) -> float:
    """Hit tokens / queried tokens between two scrapes, from the first counter pair the server exports; NaN
    when it exports none or nothing was queried."""
    for queried_name, hit_name in COUNTER_PAIRS:
        if queried_name in after and hit_name in after:
            queried = after[queried_name] - before.get(queried_name, 0.0)
            hit = after[hit_name] - before.get(hit_name, 0.0)
            return hit / queried if queried > 0 else math.nan
    return math.nan


async def _stream(
    session: aiohttp.ClientSession, endpoint: Endpoint, req: LoadRequest, sent: float,
    answer: list[str] | None = None,
) -> RequestRecord:
    """One streamed request; ``answer``, if given, gets the generated text's pieces."""
    loop = asyncio.get_running_loop()
    path, body = request_body(endpoint, req)
    times: list[float] = []
    error, reported = None, None
    try:
        async with session.post(endpoint.url + path, json=body) as resp:
            if resp.status != 200:
                error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
            else:
                async for raw in resp.content:
                    line = raw.decode("utf-8", "replace").strip()
                    n, done, error = parse_event(endpoint.api, line)
                    times.extend([loop.time()] * n)
                    if answer is not None and n:
                        answer.append(event_text(endpoint.api, line))
                    usage = parse_usage(line) if endpoint.api == "completions" and not n else None
                    reported = usage if usage is not None else reported
                    if done:
                        break
    except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as e:
        error = f"{type(e).__name__}: {e}"
    first = times[0] if times else None
    itl = tuple(b - a for a, b in zip(times, times[1:]))
    end = loop.time() if error is None else None
    tokens = reported if reported is not None else len(times)
    return RequestRecord(sent, first, end, req.prompt_len, tokens, error=error, itl=itl)


async def _timed(session, endpoint, req: LoadRequest, t0: float, bar: tqdm) -> RequestRecord:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, t0 + req.arrival - loop.time()))
    record = await _stream(session, endpoint, req, loop.time())
    bar.update(1)
    return record


def _session() -> aiohttp.ClientSession:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=900)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout)


Drive = Callable[[aiohttp.ClientSession, float, tqdm], Awaitable[list[RequestRecord]]]


async def _measured(endpoint: Endpoint, total: int, desc: str, drive: Drive) -> LoadResult:
    """``drive(session, t0, bar)``'s records (``total`` of them, ``bar`` counting them), the server's hit rate
    over the run (its /metrics before and after) and the run's duration from ``t0``."""
    async with _session() as session:
        before = await _metrics(session, endpoint.url)
        t0 = asyncio.get_running_loop().time()
        with tqdm(total=total, desc=desc, unit="req", leave=False) as bar:
            records = await drive(session, t0, bar)
        duration = asyncio.get_running_loop().time() - t0
        after = await _metrics(session, endpoint.url)
    return LoadResult(records, hit_rate_between(before, after), duration)


async def run_load(endpoint: Endpoint, requests: Sequence[LoadRequest], desc: str = "load") -> LoadResult:
    """Send every request at its arrival time and wait for all; record times are the event loop's clock."""

    async def drive(session: aiohttp.ClientSession, t0: float, bar: tqdm) -> list[RequestRecord]:
        return list(await asyncio.gather(*(_timed(session, endpoint, r, t0, bar) for r in requests)))

    return await _measured(endpoint, len(requests), desc, drive)


async def run_closed(
    endpoint: Endpoint, requests: Sequence[LoadRequest], clients: int, desc: str = "load"
) -> LoadResult:
    """Closed loop: ``clients`` concurrent clients take the requests in order, each sending its next one as
    soon as its previous one ends (arrivals are ignored; a record's arrival is when it was sent).
    ``clients=1`` sends them one at a time. ``duration`` spans the first send to the last end.

    Raises:
        ValueError: ``clients`` < 1.
    """
    if clients < 1:
        raise ValueError("clients must be >= 1")
    pending = iter(requests)
    records: list[RequestRecord] = []

    async def client(session: aiohttp.ClientSession, bar: tqdm) -> None:
        for req in pending:  # one shared iterator: each request goes to exactly one client
            records.append(await _stream(session, endpoint, req, asyncio.get_running_loop().time()))
            bar.update(1)

    async def drive(session: aiohttp.ClientSession, t0: float, bar: tqdm) -> list[RequestRecord]:
        await asyncio.gather(*(client(session, bar) for _ in range(clients)))
        return sorted(records, key=lambda r: r.arrival)

    return await _measured(endpoint, len(requests), desc, drive)


async def run_sessions(
    endpoint: Endpoint, sessions: Sequence[Sequence[Turn]], desc: str = "load", answers_back: bool = True
) -> LoadResult:
    """Sessions (a chat's turns, an agent task's steps), each closed-loop: its first request is sent at its
    arrival, every next one the gap between their arrivals after the previous one ends (failed or not), as a
    user reads and types or a tool runs only once the answer is there. ``answers_back``: a turn's prompt is
    its parent's prompt as sent, the parent's answer as streamed and its ``suffix``, as a chat client or an
    agent sends the model's own words back; else the request's prompt as written. Records are in the order
    sent."""
    records: list[RequestRecord] = []

    async def replay(session: aiohttp.ClientSession, turns: Sequence[Turn], t0: float, bar: tqdm) -> None:
        loop, due, last = asyncio.get_running_loop(), t0, None
        sent: list[str] = []
        answers: list[list[str]] = []
        for turn in turns:
            req, parent = turn.request, turn.parent
            if answers_back and parent is not None:
                req = replace(req, prompt=sent[parent] + "".join(answers[parent]) + turn.suffix)
            due += req.arrival - (last.arrival if last is not None else 0.0)
            await asyncio.sleep(max(0.0, due - loop.time()))
            answers.append([])
            sent.append(req.prompt)
            records.append(await _stream(session, endpoint, req, loop.time(), answers[-1]))
            due, last = loop.time(), req
            bar.update(1)

    async def drive(session: aiohttp.ClientSession, t0: float, bar: tqdm) -> list[RequestRecord]:
        await asyncio.gather(*(replay(session, turns, t0, bar) for turns in sessions))
        return sorted(records, key=lambda r: r.arrival)

    return await _measured(endpoint, sum(len(s) for s in sessions), desc, drive)
