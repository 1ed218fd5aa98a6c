"""The side-by-side comparison with a peer server (``prism-bench peer``), without the peer: the table and its
ratio arithmetic, the loads' determinism and shape, vLLM's counters and usage chunks, the closed-loop client,
and one small run end to end against our own server on the demo model."""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
from aiohttp import web

from bench import peer_table
from bench.loadgen import (
    Endpoint, LoadRequest, Turn, hit_rate_between, parse_counters, parse_usage, run_closed, run_sessions,
)
from bench.peer_loads import QUICK, PeerLoads, PeerParams
from bench.peer_run import PeerRun, main, run_paired, write_result
from bench.quiet import cpu_times, wait_quiet
from bench.tests.test_workloads import _train_tokenizer
from bench.workloads.agent import AgentParams
from bench.workloads.conversation import ConversationParams
from bench.workloads.prompts import PromptBuilder
from bench.workloads.zipf_rag import ZipfRagParams


def _row(
    key: str, value: float, unit: str = "ms", better: str = "lower", target: float | None = None
) -> dict:
    return {"key": key, "label": key, "unit": unit, "value": value, "better": better, "target": target}


def test_table_ratios_targets_and_missing_values() -> None:
    ours = [_row("cold", 170.0, target=0.8), _row("tok", 1250.0, "tok/s", "higher", 1.25),
            _row("hit", 0.9, "%", "higher"), _row("p99", 300.0, target=0.8), _row("only_ours", 1.0)]
    theirs = [_row("cold", 200.0, target=0.8), _row("tok", 1000.0, "tok/s", "higher", 1.25),
              _row("hit", 0.8, "%", "higher"), _row("p99", math.nan, target=0.8), _row("only_theirs", 2.0)]
    lines = {ln.split(" | ")[0][2:]: ln for ln in peer_table.render(ours, theirs).splitlines()[2:]}
    assert list(lines) == ["cold", "tok", "hit", "p99", "only_ours", "only_theirs"]
    assert lines["cold"] == "| cold | 170 | 200 | 0.85x | lower | <= 0.8x: not met |"
    assert lines["tok"] == "| tok | 1,250 | 1,000 | 1.25x | higher | >= 1.25x: met |"
    assert lines["hit"] == "| hit | 90.0% | 80.0% | 1.12x | higher |  |"
    assert lines["p99"] == "| p99 | 300 | n/a | n/a | lower | <= 0.8x: n/a |"
    assert lines["only_ours"] == "| only_ours | 1.0 | n/a | n/a | lower |  |"
    assert lines["only_theirs"] == "| only_theirs | n/a | 2.0 | n/a | lower |  |"
    assert peer_table.ratio(1.0, 0.0) != peer_table.ratio(1.0, 0.0)  # NaN: no division by zero
    assert peer_table.target_met(0.8, "lower", 0.8) and not peer_table.target_met(1.2, "higher", 1.25)


def test_vllm_counters_and_usage_chunk() -> None:
    text = (
        '# TYPE vllm:prefix_cache_queries_total counter\n'
        'vllm:prefix_cache_queries_total{engine="0",model_name="tiny"} %s\n'
        'vllm:prefix_cache_queries_created{engine="0",model_name="tiny"} 1.7e+09\n'
        'vllm:prefix_cache_hits_total{engine="0",model_name="tiny"} %s\n'
    )
    before, after = parse_counters(text % (100.0, 20.0)), parse_counters(text % (1100.0, 820.0))
    assert hit_rate_between(before, after) == pytest.approx(0.8)
    assert math.isnan(hit_rate_between(after, after))  # nothing queried in between
    usage = 'data: {"choices": [], "usage": {"prompt_tokens": 6, "completion_tokens": 3}}'
    assert parse_usage(usage) == 3
    assert parse_usage('data: {"choices": [{"text": " a"}], "usage": null}') is None
    assert parse_usage("data: [DONE]") is None


def test_loads_are_deterministic_sized_and_cold_per_point() -> None:
    builder = PromptBuilder(_train_tokenizer("bytelevel"))
    params = PeerParams(cold_prompt_len=301, cold_repeats=2, client_requests=4, shared_prefix_len=120,
                        shared_requests=12,
                        rag=ZipfRagParams(corpus=20, system_len=40, passage_len=20, top_k=2))
    a, b = PeerLoads(params, builder), PeerLoads(params, builder)
    assert [r.prompt for r in a.shared(2.0)] == [r.prompt for r in b.shared(2.0)]
    assert [r.prompt for r in a.rag(3.0)] == [r.prompt for r in b.rag(3.0)]
    cold = a.cold_and_hit()
    assert len(cold) == 4 and cold[0].prompt == cold[1].prompt != cold[2].prompt == cold[3].prompt
    assert all(len(builder.token_ids(r.prompt)) + 1 == r.prompt_len == 301 for r in cold)  # + BOS
    at2, at8 = a.shared(2.0), a.shared(8.0)
    assert len({r.prompt[:200] for r in at2}) <= params.shared_prefixes  # the shared prefixes
    assert not {r.prompt[:200] for r in at2} & {r.prompt[:200] for r in at8}  # each point starts cold
    assert at8[-1].arrival < at2[-1].arrival
    other = PeerLoads(replace(params, seed=1), builder)
    assert not {r.prompt for r in other.cold_and_hit()} & {r.prompt for r in cold}


def test_session_loads_are_deterministic_extend_their_turns_and_start_cold_per_point() -> None:
    builder = PromptBuilder(_train_tokenizer("bytelevel"))
    chat = ConversationParams(sessions=6, continue_first=1.0, system_len=40, user_len=(8, 16), answer_len=(4, 8))
    params = PeerParams(chat=chat,
                        agent=AgentParams(tasks=4, system_len=60, task_len=(8, 16), action_len=(4, 8),
                                          tool_len=(8, 32), max_context=400))
    a, b = PeerLoads(params, builder), PeerLoads(params, builder)
    for build in ("chat", "agent"):
        one, two = getattr(a, build)(1.0), getattr(b, build)(1.0)
        assert one == two
        assert len(one) == (6 if build == "chat" else 4) and any(len(s) > 1 for s in one)
        reqs = [t.request for s in one for t in s]
        assert all(len(builder.token_ids(r.prompt)) + 1 == r.prompt_len for r in reqs)  # + BOS
        for turns in one:
            assert turns[0].parent is None  # a later one without a parent: an agent's retry of its first step
            assert all(t.parent is not None or t.request.prompt == turns[0].request.prompt for t in turns)
            for t in (t for t in turns if t.parent is not None):  # the parent's prompt, its answer, the suffix
                parent = turns[t.parent].request
                answer = t.request.prompt[len(parent.prompt):-len(t.suffix)]
                assert t.parent < turns.index(t) and t.request.prompt.startswith(parent.prompt)
                assert t.request.prompt.endswith(t.suffix) and len(builder.token_ids(answer)) == parent.max_new_tokens
        fast = getattr(a, build)(4.0)
        assert not {r.prompt[:100] for r in reqs} & {t.request.prompt[:100] for s in fast for t in s}
        assert fast[-1][0].request.arrival == pytest.approx(one[-1][0].request.arrival / 4)


async def _completions_server(handler) -> tuple[web.AppRunner, str]:
    """A local server of ``/v1/completions`` answered by ``handler``: its runner (to clean up) and URL."""
    app = web.Application()
    app.router.add_post("/v1/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def _sessions_run(answers_back: bool) -> tuple[list, list[str]]:
    prompts: list[str] = []

    async def completions(request: web.Request) -> web.StreamResponse:
        prompt = (await request.json())["prompt"]
        prompts.append(prompt)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(0.05)
        for piece in (f" <{len(prompt)}", ">"):  # an answer the workload could not know
            await resp.write(f'data: {{"choices": [{{"text": "{piece}", "finish_reason": null}}]}}\n\n'.encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    runner, url = await _completions_server(completions)
    # two sessions: turns 0.1 s apart in the workload, the second session starting 0.02 s after the first;
    # each turn extends the one before with its answer and " u{i}"
    sessions = [
        [Turn(LoadRequest(t0 + 0.1 * i, f"s{t0} written{i}", 2, 1), i - 1 if i else None, f" u{i}") for i in range(3)]
        for t0 in (0.0, 0.02)
    ]
    try:
        endpoint = Endpoint(url, "completions", "tiny")
        return (await run_sessions(endpoint, sessions, answers_back=answers_back)).records, prompts
    finally:
        await runner.cleanup()


def test_sessions_send_each_turn_its_gap_after_the_previous_turn_ends_and_answers_back() -> None:
    records, prompts = asyncio.run(_sessions_run(True))
    first = [p for p in prompts if p.startswith("s0.0 ")]
    assert first == ["s0.0 written0", "s0.0 written0 <13> u1", "s0.0 written0 <13> u1 <21> u2"]
    assert sorted(asyncio.run(_sessions_run(False))[1]) == sorted(f"s{t} written{i}" for t in (0.0, 0.02)
                                                                   for i in range(3))
    assert len(records) == 6 and all(r.error is None and r.finished is not None for r in records)
    first, second = records[0::2], records[1::2]  # the sessions interleave: sent in the order they start
    assert second[0].arrival - first[0].arrival == pytest.approx(0.02, abs=0.015)  # side by side
    for turns in (first, second):
        for prev, nxt in zip(turns, turns[1:]):
            assert nxt.arrival - prev.finished == pytest.approx(0.1, abs=0.03)  # closed loop: after the answer


def test_table_command_reads_both_results_and_flags_different_loads(tmp_path, capsys) -> None:
    params = PeerParams()
    ours = [_row("cold", 100.0), _row("p99", math.nan)]
    write_result(tmp_path / "prism.json", "prism", "u", params, ours, [])
    write_result(tmp_path / "vllm.json", "vllm", "v", params, [_row("cold", 400.0), _row("p99", 5.0)], [])
    assert main(["table", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "| cold | 100 | 400 | 0.25x | lower |  |" in text and "| p99 | n/a | 5.0 | n/a |" in text
    assert "- shared prefix: 60 Poisson requests per point" in text and "WARNING" not in text
    assert (tmp_path / "table.md").read_text() == text
    write_result(tmp_path / "vllm.json", "vllm", "v", replace(params, seed=1), [_row("cold", 400.0)], [])
    assert main(["table", str(tmp_path)]) == 0
    assert "WARNING" in capsys.readouterr().out


async def _closed_run() -> tuple:
    in_flight, peak = [0], [0]

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(0.02)
        # two tokens merged into one chunk, as vLLM does when the client lags: usage says how many
        await resp.write(b'data: {"choices": [{"text": " a b", "finish_reason": "length"}]}\n\n')
        usage = {"choices": [], "usage": {"completion_tokens": body["max_tokens"]}}
        await resp.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        in_flight[0] -= 1
        return resp

    runner, url = await _completions_server(completions)
    try:
        reqs = [LoadRequest(0.0, f"p{i}", 2, 1) for i in range(10)]
        return await run_closed(Endpoint(url, "completions", "tiny"), reqs, 3), peak[0]
    finally:
        await runner.cleanup()


def test_closed_loop_keeps_n_clients_busy_and_counts_usage_tokens() -> None:
    result, peak = asyncio.run(_closed_run())
    assert peak == 3 and len(result.records) == 10
    assert all(r.error is None and r.output_tokens == 2 for r in result.records)
    assert result.duration >= 4 * 0.02  # 10 requests over 3 clients: at least 4 rounds
    with pytest.raises(ValueError):
        asyncio.run(run_closed(Endpoint("http://127.0.0.1:9"), [], 0))


def test_the_clients_load_takes_its_shape_from_the_command_line() -> None:
    from bench.peer_run import _parser, peer_params

    base = ["measure", "--url", "u", "--name", "n", "--model-id", "m", "--out", "o"]
    assert peer_params(_parser().parse_args(base)) == PeerParams()
    args = _parser().parse_args(base + ["--clients", "16", "--client-prompt-len", "1000", "--client-output", "512",
                                        "--seed", "3"])
    assert peer_params(args) == PeerParams(seed=3, clients=16, client_requests=32, client_prompt_len=1000,
                                           client_output=512)
    quick = peer_params(_parser().parse_args(base + ["--quick", "--client-output", "64"]))
    assert quick.client_output == 64 and quick.client_requests == QUICK.client_requests


def test_peer_run_against_our_server_on_the_demo_model(tmp_path) -> None:
    from bench.server import LaunchSpec, LiveServer
    from bench.workloads.prompts import load_tokenizer
    from router_py.launch.model_source import demo_model

    model = str(demo_model())
    params = PeerParams(
        warmup_requests=1, cold_prompt_len=200, cold_repeats=2, clients=3, client_prompt_len=20,
        client_output=8, client_requests=6, client_runs=2, shared_prefixes=2, shared_prefix_len=96, shared_unique_len=8,
        shared_output=4,
        shared_requests=8, shared_qps=(20.0,), rag_requests=6, rag_qps=(20.0,),
        rag=ZipfRagParams(corpus=10, system_len=40, passage_len=20, top_k=2, question_len=8,
                          output_len=(2, 4)),
        chat=ConversationParams(sessions=4, continue_first=1.0, max_turns=3, gap_median_s=0.05, system_len=64,
                                user_len=(8, 16), answer_len=(2, 4)),
        chat_rates=(20.0,),
        agent=AgentParams(tasks=3, tool_latency_s=0.05, system_len=96, task_len=(8, 16), action_len=(2, 4),
                          tool_len=(8, 32), max_context=400),
        agent_rates=(20.0,),
    )
    loads = PeerLoads(params, PromptBuilder(load_tokenizer(model)))
    extra = ("--num-blocks", "1024", "--hostname", "127.0.0.1", "--shard-uds-path", str(tmp_path / "shard"))
    launch = LaunchSpec(model, extra_args=extra, log_dir=tmp_path)
    with LiveServer(launch, "qas", "dart") as url:
        run = PeerRun(Endpoint(url, "completions"), loads, log=print)
        rows = {r["key"]: r["value"] for r in run.run_all()}
    assert rows["errors"] == 0, run.errors
    assert rows["cold_ttft_ms"] > 0 and rows["hit_ttft_ms"] > 0
    assert 0 < rows["clients_out_tokens"] <= 8 and rows["clients_tok_s"] > 0
    assert rows["clients_ttft_p99_ms"] >= rows["clients_ttft_p50_ms"] > 0
    assert 0.3 < rows["shared@20_hit"] < 1 and rows["shared@20_p99_ms"] >= rows["shared@20_p50_ms"] > 0
    assert 0 <= rows["rag@20_hit"] < 1 and rows["rag@20_p99_ms"] > 0
    assert 0.3 < rows["chat@20_hit"] < 1 and rows["chat@20_p99_ms"] >= rows["chat@20_p50_ms"] > 0
    assert 0.3 < rows["agent@20_hit"] < 1 and rows["agent@20_p99_ms"] >= rows["agent@20_p50_ms"] > 0


def _scripted_run(tag: str, ran: list[str], monkeypatch) -> PeerRun:
    """A PeerRun whose points only note ``tag point`` in ``ran`` and add a row."""
    params = SimpleNamespace(shared_qps=(1.0,), rag_qps=(2.0, 3.0), chat_rates=(1.0,), agent_rates=(0.5,))
    loads = SimpleNamespace(warmup=list, shared=list, rag=list, chat=list, agent=list, params=params)
    run = PeerRun(Endpoint(f"http://{tag}"), loads, log=lambda *a, **k: None,  # type: ignore[arg-type]
                  quiet=lambda: ran.append(f"{tag} quiet") or 0.0)

    def point(key: str) -> None:
        ran.append(f"{tag} {key}")
        run.rows.append(_row(key, 1.0))

    monkeypatch.setattr(run, "_closed", lambda *a: ran.append(f"{tag} warmup"))
    for name in ("cold", "clients"):
        monkeypatch.setattr(run, name, lambda n=name: point(n))
    monkeypatch.setattr(run, "_sweep", lambda name, label, qps, build, target: point(f"{name}@{qps:g}"))
    monkeypatch.setattr(run, "_session_sweep", lambda name, unit, rate, build: point(f"{name}@{rate:g}"))
    return run


def test_measure_runs_only_the_named_loads_and_refuses_unknown_names(monkeypatch, capsys) -> None:
    ran: list[str] = []
    rows = _scripted_run("a", ran, monkeypatch).run_all(["agent", "rag", "clients"])
    assert [r for r in ran if not r.endswith("quiet")] == ["a warmup", "a clients", "a rag@2", "a rag@3",
                                                           "a agent@0.5"]
    assert ran.count("a quiet") == 4 and ran.index("a quiet") == 1  # before every point
    assert [r["key"] for r in rows] == ["clients", "rag@2", "rag@3", "agent@0.5", "errors"]
    args = ["measure", "--model-id", "m", "--url", "u", "--name", "n", "--out", "o", "--loads", "clients,x"]
    assert main(args) == 2 and "--loads takes a subset" in capsys.readouterr().err


def test_pair_alternates_the_servers_point_by_point_in_abba_order(monkeypatch, capsys) -> None:
    ran: list[str] = []
    a, b = _scripted_run("a", ran, monkeypatch), _scripted_run("b", ran, monkeypatch)
    run_paired(a, b, ["rag", "shared", "cold"])
    ran = [r for r in ran if not r.endswith("quiet")]
    assert ran == ["a warmup", "b warmup", "a cold", "b cold", "b shared@1", "a shared@1", "a rag@2", "b rag@2",
                   "b rag@3", "a rag@3"]
    assert [r["key"] for r in a.rows] == [r["key"] for r in b.rows] == ["cold", "shared@1", "rag@2", "rag@3", "errors"]
    args = ["pair", "--model-id", "m", "--out", "o", "--server", "vllm", "u", "tiny"]
    assert main(args) == 2 and "pair takes --server twice" in capsys.readouterr().err


def test_wait_quiet_samples_until_a_quiet_window_or_the_limit(tmp_path) -> None:
    samples = iter([(0, 0), (90, 100), (180, 200), (185, 300)])  # busy 90%, 90%, then 5%
    slept: list[float] = []
    assert wait_quiet(lambda: next(samples), slept.append, window=0.5) == 1.5 and slept == [0.5] * 3
    busy = iter((100 * i, 100 * i) for i in range(100))
    assert wait_quiet(lambda: next(busy), lambda s: None, window=1.0, limit=4.0) == 4.0
    assert wait_quiet(lambda: None, lambda s: None, window=0.25) == 0.25  # no /proc: one window
    stat = tmp_path / "stat"
    stat.write_text("cpu  10 2 30 400 8 0 5 0 0 0\ncpu0 1 1 1 1 1 0 0 0 0 0\n")
    assert cpu_times(stat) == (47, 455) and cpu_times(tmp_path / "missing") is None
    assert cpu_times() is not None  # this machine's /proc/stat
