from __future__ import annotations

import asyncio
import json
import math

import pytest
from aiohttp import web

from bench.calibrate import Sample, fit
from bench.loadgen import Endpoint, LoadRequest, hit_rate_between, parse_counters, parse_event, run_load
from bench.metrics import summarize


def test_parse_sse_events_of_both_apis() -> None:
    tgi, oai = "generate_stream", "completions"
    assert parse_event(tgi, 'data:{"token": {"id": 1}, "generated_text": null}') == (1, False, None)
    assert parse_event(tgi, 'data:{"token": {"id": 1}, "generated_text": "a b"}') == (1, True, None)
    assert parse_event(tgi, 'data:{"error": "boom", "error_type": "x"}') == (0, True, "boom")
    assert parse_event(oai, 'data: {"choices": [{"text": " a", "finish_reason": null}]}') == (1, False, None)
    assert parse_event("completions", "data: [DONE]") == (0, True, None)
    assert parse_event("completions", ": keep-alive") == (0, False, None)


def test_hit_rate_from_counter_deltas() -> None:
    before = parse_counters(
        "# TYPE x counter\nprism_prefix_cache_queried_tokens 100\nprism_prefix_cache_hit_tokens 10\n"
    )
    after = parse_counters(
        'prism_prefix_cache_queried_tokens_total{ns="a"} 300\nprism_prefix_cache_hit_tokens 90\n'
    )
    assert hit_rate_between(before, after) == pytest.approx(0.4)
    assert math.isnan(hit_rate_between({}, {}))


def _fake_server(queried: list[int]) -> web.Application:
    async def generate_stream(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        n = body["parameters"]["max_new_tokens"]
        if body["inputs"] == "fail":
            return web.Response(status=422, text='{"error": "bad"}')
        queried[0] += len(body["inputs"].split())
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(n):
            await asyncio.sleep(0.01)
            event = {"token": {"id": i, "text": " w"}, "generated_text": "done" if i == n - 1 else None}
            await resp.write(f"data:{json.dumps(event)}\n\n".encode())
        return resp

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=f"prism_prefix_cache_queried_tokens {queried[0]}\n"
                                 f"prism_prefix_cache_hit_tokens {queried[0] // 4}\n")

    app = web.Application()
    app.router.add_post("/generate_stream", generate_stream)
    app.router.add_get("/metrics", metrics)
    return app


async def _run() -> tuple:
    runner = web.AppRunner(_fake_server([0]))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    reqs = [LoadRequest(0.02 * i, "a b c d", 3, 4) for i in range(8)] + [LoadRequest(0.05, "fail", 3, 1)]
    try:
        return await run_load(Endpoint(f"http://127.0.0.1:{port}"), reqs)
    finally:
        await runner.cleanup()


def test_open_loop_load_records_latencies_errors_and_hit_rate() -> None:
    result = asyncio.run(_run())
    ok = [r for r in result.records if r.error is None]
    assert len(ok) == 8 and "422" in (result.records[-1].error or "")
    assert all(r.output_tokens == 3 and len(r.itl) == 2 for r in ok)
    assert all(r.ttft is not None and r.ttft >= 0.005 for r in ok)
    assert result.hit_rate == pytest.approx(0.25)
    s = summarize(result.records, result.hit_rate)
    assert s["errors"] == 1 and s["requests"] == 9 and s["itl_mean"] > 0.005


def test_calibration_fit_recovers_a_linear_cost() -> None:
    truth = (0.002, 3e-5, 2e-9, 1e-4, 5e-8)

    def t(prefill, decodes) -> float:
        new = sum(n for n, _ in prefill)
        pairs = sum(n * (c + (n + 1) / 2) for n, c in prefill)
        linear = truth[1] * new + truth[2] * pairs + truth[3] * len(decodes) + truth[4] * sum(decodes)
        return truth[0] + linear

    samples = [Sample(((n, c),), (), t([(n, c)], [])) for n in (32, 128, 512, 2048) for c in (0, 1024)]
    samples += [Sample((), tuple([300] * b), t([], [300] * b)) for b in (1, 4, 16)]
    samples += [Sample((), tuple([2000] * b), t([], [2000] * b)) for b in (2, 8)]
    cost = fit(samples, kv_capacity_tokens=1000)
    got = (cost.base_s, cost.prefill_token_s, cost.prefill_pair_s, cost.decode_seq_s, cost.decode_ctx_s)
    assert got == pytest.approx(truth, rel=1e-3, abs=1e-12)
    assert cost.kv_capacity_tokens == 1000
