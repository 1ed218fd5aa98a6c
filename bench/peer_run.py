"""``prism-bench peer``: measure one running server with the loads of :mod:`bench.peer_loads`, then print the
side-by-side table of two measured servers (issue 10's comparison with vLLM). ``pair`` measures two running
servers point by point, alternately (:func:`run_paired`); ``scripts/bench-vs-vllm.sh`` runs it all that way.

    prism-bench peer measure --model-id DIR --url http://127.0.0.1:8011 --name vllm \\
        --served-model-name tiny --out out/peer [--quick]
    prism-bench peer measure --model-id DIR --url http://127.0.0.1:3000 --name prism --out out/peer [--quick]
    prism-bench peer table out/peer --ours prism --theirs vllm
    prism-bench peer pair --model-id DIR --server vllm http://127.0.0.1:8011 tiny \\
        --server prism http://127.0.0.1:3000 tgi --out out/peer   # both up, alternated point by point

Everything goes over streaming ``/v1/completions`` at temperature 0; prompts come from the model folder's
tokenizer. TTFT percentiles cover every request of a point (each point starts cold on purpose); the hit
rate is the server's own prefix-cache counters over the point.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

from bench import peer_table
from bench.loadgen import Endpoint, LoadRequest, LoadResult, Turn, run_closed, run_load, run_sessions
from bench.metrics import RequestRecord, summarize
from bench.peer_loads import QUICK, PeerLoads, PeerParams, describe, with_clients
from bench.quiet import wait_quiet

Row = dict[str, object]
LOADS = ("cold", "clients", "shared", "rag", "chat", "agent")  # in the order PeerRun.points lists them


def _row(
    key: str, label: str, unit: str, value: float, better: str = "lower", target: float | None = None
) -> Row:
    return {"key": key, "label": label, "unit": unit, "value": value, "better": better, "target": target}


def _ms(seconds: float) -> float:
    return 1000.0 * seconds


def _median_ttft(records: Sequence[RequestRecord]) -> float:
    ttfts = [r.ttft for r in records if r.error is None and r.ttft is not None]
    return statistics.median(ttfts) if ttfts else math.nan


class PeerRun:
    """Runs every load against one endpoint and keeps the measurement rows and the errors seen."""

    def __init__(
        self, endpoint: Endpoint, loads: PeerLoads, log: Callable[..., None] = print,
        quiet: Callable[[], float] = wait_quiet,
    ) -> None:
        self.endpoint, self.loads, self.log, self.quiet = endpoint, loads, log, quiet
        self.rows: list[Row] = []
        self.errors: list[str] = []

    def _closed(self, requests: Sequence[LoadRequest], clients: int, desc: str) -> LoadResult:
        return self._noted(run_closed(self.endpoint, requests, clients, desc), desc)

    def _sessions(self, sessions: Sequence[Sequence[Turn]], desc: str) -> LoadResult:
        return self._noted(run_sessions(self.endpoint, sessions, desc), desc)

    def _open(self, requests: Sequence[LoadRequest], desc: str) -> LoadResult:
        return self._noted(run_load(self.endpoint, requests, desc), desc)

    def _noted(self, load: Coroutine[Any, Any, LoadResult], desc: str) -> LoadResult:
        """Runs ``load``; its failed requests join the errors seen."""
        result = asyncio.run(load)
        self.errors += [f"{desc}: {r.error}" for r in result.records if r.error is not None]
        return result

    def cold(self) -> None:
        p = self.loads.params
        records = self._closed(self.loads.cold_and_hit(), 1, "cold+hit").records
        n, k = f"{p.cold_prompt_len:,}", p.cold_repeats
        self.rows.append(_row("cold_ttft_ms", f"cold {n}-token prompt: TTFT, median of {k} (ms)", "ms",
                              _ms(_median_ttft(records[0::2])), target=0.8))
        self.rows.append(_row("hit_ttft_ms", f"same prompt repeated (hit): TTFT, median of {k} (ms)", "ms",
                              _ms(_median_ttft(records[1::2]))))

    def clients(self) -> None:
        p = self.loads.params
        rates, outs, records = [], [], []
        for run in range(p.client_runs):  # NOTE: the host's neighbours move one run's tok/s by up to 30%
            result = self._closed(self.loads.clients(run), p.clients, f"clients {run + 1}/{p.client_runs}")
            ok = [r for r in result.records if r.error is None]
            tokens = sum(r.output_tokens for r in ok)
            rates.append(tokens / result.duration if result.duration > 0 else math.nan)
            outs += [r.output_tokens for r in ok]
            records += result.records
        per_run = ", ".join(f"{r:,.0f}" for r in rates)
        self.log(f"clients: output tok/s per run {per_run}", file=sys.stderr, flush=True)
        what = f"{p.clients} clients x {p.client_output} output tokens"
        self.rows.append(_row("clients_tok_s", f"{what}: output tokens/s (median of {p.client_runs} runs)",
                              "tok/s", statistics.median(rates), "higher", 1.25))
        mean_out = statistics.mean(outs) if outs else math.nan
        self.rows.append(_row("clients_out_tokens", f"{what}: output tokens per request", "count", mean_out,
                              "higher"))
        s = summarize(records, math.nan)
        for pct in (50, 99):
            self.rows.append(_row(f"clients_ttft_p{pct}_ms", f"{what}: TTFT P{pct} over every run (ms)", "ms",
                                  _ms(float(s[f"ttft_p{pct}"]))))

    def _sweep(
        self, name: str, label: str, qps: float, build: Callable[[float], Sequence[LoadRequest]],
        p99_target: float | None,
    ) -> None:
        result = self._open(build(qps), f"{name}@{qps:g}")
        self._percentiles(f"{name}@{qps:g}", f"{label} @ {qps:g} req/s", result, p99_target)

    def _session_sweep(
        self, name: str, unit: str, rate: float, build: Callable[[float], Sequence[Sequence[Turn]]]
    ) -> None:
        result = self._sessions(build(rate), f"{name}@{rate:g}")
        self._percentiles(f"{name}@{rate:g}", f"{name} @ {rate:g} {unit}", result, None)

    def _percentiles(self, key: str, at: str, result: LoadResult, p99_target: float | None) -> None:
        s = summarize(result.records, result.hit_rate)
        p50, p99 = _ms(float(s["ttft_p50"])), _ms(float(s["ttft_p99"]))
        self.rows.append(_row(f"{key}_p50_ms", f"{at}: TTFT P50 (ms)", "ms", p50))
        self.rows.append(_row(f"{key}_p99_ms", f"{at}: TTFT P99 (ms)", "ms", p99, target=p99_target))
        self.rows.append(_row(f"{key}_hit", f"{at}: token hit rate", "%", result.hit_rate, "higher"))

    def points(self, loads: Sequence[str] = LOADS) -> list[tuple[str, Callable[[], None]]]:
        """The named loads (``LOADS``, in that order) as measurement points: (name, measure), one per sweep
        point, each adding its rows."""
        p, out = self.loads.params, []
        sweeps = {  # name: (label, QPS points, the requests at a QPS, P99 target)
            "shared": ("shared prefix", p.shared_qps, self.loads.shared, 0.8),
            "rag": ("RAG", p.rag_qps, self.loads.rag, None),
        }
        sessions = {  # name: (unit of the rate, rates, the sessions at a rate)
            "chat": ("sessions/s", p.chat_rates, self.loads.chat),
            "agent": ("tasks/s", p.agent_rates, self.loads.agent),
        }
        for name in LOADS:
            if name not in loads:
                continue
            if name in sessions:
                unit, rates, starts = sessions[name]
                out += [(f"{name}@{r:g}", partial(self._session_sweep, name, unit, r, starts)) for r in rates]
                continue
            if name not in sweeps:
                out.append((name, getattr(self, name)))
                continue
            label, qps, build, target = sweeps[name]
            out += [(f"{name}@{q:g}", partial(self._sweep, name, label, q, build, target)) for q in qps]
        return out

    def warmup(self) -> None:
        self._closed(self.loads.warmup(), 1, "warmup")

    def measure(self, point: tuple[str, Callable[[], None]]) -> None:
        """Runs one of :meth:`points`, once the machine is quiet (:func:`bench.quiet.wait_quiet`), and logs
        its last row."""
        self.quiet()
        point[1]()
        self.log(f"  {self.endpoint.url}: {self.rows[-1]['label']}: {self.rows[-1]['value']}", file=sys.stderr,
                 flush=True)

    def finish(self) -> list[Row]:
        """The rows measured, with the count of failed requests appended."""
        self.rows.append(_row("errors", "failed requests (all loads)", "count", float(len(self.errors))))
        return self.rows

    def run_all(self, loads: Sequence[str] = LOADS) -> list[Row]:
        """Warm up, then the named loads (``LOADS``, in that order)."""
        self.warmup()
        for point in self.points(loads):
            self.measure(point)
        return self.finish()


def run_paired(first: PeerRun, second: PeerRun, loads: Sequence[str] = LOADS) -> None:
    """Both servers (each already running) measured point by point, alternately, the order swapped at every
    point (ABBA), so that a shared machine's drift over minutes hits both sides of each ratio alike, where
    measuring one server after the other put minutes between the two halves of a ratio. Each server sees the
    same requests in the same order as alone. An idle server takes next to no CPU (vLLM's about 1% of a core,
    ours 0.3%); each point waits for the one before to stop using it (:meth:`PeerRun.measure`)."""
    first.warmup()
    second.warmup()
    for i, (a, b) in enumerate(zip(first.points(loads), second.points(loads))):
        turns = [(first, a), (second, b)]
        for run, point in turns if i % 2 == 0 else turns[::-1]:
            run.measure(point)
    first.finish()
    second.finish()


# ---- command line -----------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prism-bench peer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="run every load against one running server; writes OUT/NAME.json")
    m.add_argument("--url", required=True)
    m.add_argument("--name", required=True, help="a label, also the result file's name")
    m.add_argument("--served-model-name", default="tgi", help="the OpenAI `model` field (vLLM: its name)")
    pair = sub.add_parser("pair", help="two running servers measured point by point, alternately (run_paired); "
                          "writes OUT/NAME.json for each")
    pair.add_argument("--server", nargs=3, action="append", required=True, metavar=("NAME", "URL", "MODEL"),
                      help="twice: a label (the result file's name), its URL, its OpenAI `model` field")
    for cmd in (m, pair):
        cmd.add_argument("--model-id", required=True, help="the served model folder (its tokenizer.json)")
        cmd.add_argument("--out", type=Path, required=True)
        cmd.add_argument("--quick", action="store_true", help="fewer requests and QPS points (about a third)")
        cmd.add_argument("--seed", type=int, default=0)
        cmd.add_argument("--loads", default=",".join(LOADS),
                         help=f"comma-separated subset of {','.join(LOADS)} (e.g. `clients` for throughput only)")
        cmd.add_argument("--clients", type=int, default=None, help="the clients load's clients (default 32)")
        cmd.add_argument("--client-prompt-len", type=int, default=None, help="its prompts' tokens (default 100)")
        cmd.add_argument("--client-output", type=int, default=None, help="its output tokens (default 128)")
    t = sub.add_parser("table", help="print the side-by-side table of two measured servers")
    t.add_argument("out", type=Path)
    t.add_argument("--ours", default="prism")
    t.add_argument("--theirs", default="vllm")
    return p


def write_result(
    path: Path, name: str, url: str, params: PeerParams, rows: list[Row], errors: list[str]
) -> None:
    """The result file ``table`` reads: rows (NaN written as null), the parameters and their legend."""
    nan = [isinstance(r["value"], float) and math.isnan(r["value"]) for r in rows]
    safe = [{**r, "value": None if n else r["value"]} for r, n in zip(rows, nan)]
    doc = {"name": name, "url": url, "params": asdict(params), "legend": describe(params), "rows": safe,
           "errors": errors[:50]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def _loads_wanted(spec: str) -> list[str] | None:
    """``--loads``' names, or None (after saying why) where one is unknown or none is named."""
    wanted = [name.strip() for name in spec.split(",") if name.strip()]
    if set(wanted) - set(LOADS) or not wanted:
        print(f"error: --loads takes a subset of {','.join(LOADS)}; got {spec!r}", file=sys.stderr)
        return None
    return wanted


def peer_params(args: argparse.Namespace) -> PeerParams:
    """The loads' settings: ``--quick``'s or the defaults, with ``--seed`` and the clients load's shape (its
    requests twice its clients where ``--clients`` is given)."""
    params = replace(QUICK if args.quick else PeerParams(), seed=args.seed)
    return with_clients(params, args.clients, args.client_prompt_len, args.client_output)


def cmd_measure(args: argparse.Namespace) -> int:
    """``measure`` (one --url) or ``pair`` (two --server): each server's rows into OUT/NAME.json."""
    from bench.workloads.prompts import PromptBuilder, load_tokenizer

    wanted = _loads_wanted(args.loads)
    if wanted is None:
        return 2
    servers = args.server if args.command == "pair" else [(args.name, args.url, args.served_model_name)]
    if args.command == "pair" and len(servers) != 2:
        print("error: pair takes --server twice", file=sys.stderr)
        return 2
    params = peer_params(args)
    loads = PeerLoads(params, PromptBuilder(load_tokenizer(args.model_id)))
    runs = [PeerRun(Endpoint(url.rstrip("/"), "completions", model), loads) for _, url, model in servers]
    if len(runs) == 2:
        run_paired(runs[0], runs[1], wanted)
    else:
        runs[0].run_all(wanted)
    for (name, url, _), run in zip(servers, runs):
        write_result(args.out / f"{name}.json", name, url, params, run.rows, run.errors)
        for e in run.errors[:5]:
            print(f"error: {name}: {e}", file=sys.stderr)
    return 0


def load_result(path: Path) -> dict[str, object]:
    """A ``measure`` result file, NaN restored for values not measured."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["rows"] = [{**r, "value": math.nan if r["value"] is None else r["value"]} for r in doc["rows"]]
    return doc


def cmd_table(args: argparse.Namespace) -> int:
    ours, theirs = load_result(args.out / f"{args.ours}.json"), load_result(args.out / f"{args.theirs}.json")
    text = peer_table.render(ours["rows"], theirs["rows"], args.ours, args.theirs)  # type: ignore[arg-type]
    text += "\n\n" + "\n".join(f"- {line}" for line in ours.get("legend", []))  # type: ignore[union-attr]
    if ours["params"] != theirs["params"]:
        text += "\n\nWARNING: the two runs used different parameters (not the same prompts): not comparable"
    (args.out / "table.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return cmd_table(args) if args.command == "table" else cmd_measure(args)


if __name__ == "__main__":
    raise SystemExit(main())
