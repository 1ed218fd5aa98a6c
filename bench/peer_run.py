"""``prism-bench peer``: measure one running server with the loads of :mod:`bench.peer_loads`, then print the
side-by-side table of two measured servers (issue 10's comparison with vLLM; ``scripts/bench-vs-vllm.sh`` runs
it all, one server at a time).

    prism-bench peer measure --model-id DIR --url http://127.0.0.1:8011 --name vllm \\
        --served-model-name tiny --out out/peer [--quick]
    prism-bench peer measure --model-id DIR --url http://127.0.0.1:3000 --name prism --out out/peer [--quick]
    prism-bench peer table out/peer --ours prism --theirs vllm

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
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from bench import peer_table
from bench.loadgen import Endpoint, LoadRequest, LoadResult, run_closed, run_load
from bench.metrics import RequestRecord, summarize
from bench.peer_loads import QUICK, PeerLoads, PeerParams, describe

Row = dict[str, object]
LOADS = ("cold", "clients", "shared", "rag")  # PeerRun's methods, in the order run_all runs them


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

    def __init__(self, endpoint: Endpoint, loads: PeerLoads, log: Callable[..., None] = print) -> None:
        self.endpoint, self.loads, self.log = endpoint, loads, log
        self.rows: list[Row] = []
        self.errors: list[str] = []

    def _closed(self, requests: Sequence[LoadRequest], clients: int, desc: str) -> LoadResult:
        result = asyncio.run(run_closed(self.endpoint, requests, clients, desc))
        self.errors += [f"{desc}: {r.error}" for r in result.records if r.error is not None]
        return result

    def _open(self, requests: Sequence[LoadRequest], desc: str) -> LoadResult:
        result = asyncio.run(run_load(self.endpoint, requests, desc))
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
        rates, outs = [], []
        for run in range(p.client_runs):  # NOTE: the host's neighbours move one run's tok/s by up to 30%
            result = self._closed(self.loads.clients(run), p.clients, f"clients {run + 1}/{p.client_runs}")
            ok = [r for r in result.records if r.error is None]
            tokens = sum(r.output_tokens for r in ok)
            rates.append(tokens / result.duration if result.duration > 0 else math.nan)
            outs += [r.output_tokens for r in ok]
        per_run = ", ".join(f"{r:,.0f}" for r in rates)
        self.log(f"clients: output tok/s per run {per_run}", file=sys.stderr, flush=True)
        what = f"{p.clients} clients x {p.client_output} output tokens"
        self.rows.append(_row("clients_tok_s", f"{what}: output tokens/s (median of {p.client_runs} runs)",
                              "tok/s", statistics.median(rates), "higher", 1.25))
        mean_out = statistics.mean(outs) if outs else math.nan
        self.rows.append(_row("clients_out_tokens", f"{what}: output tokens per request", "count", mean_out,
                              "higher"))

    def _sweep(
        self, name: str, label: str, qps: float, requests: Sequence[LoadRequest], p99_target: float | None
    ) -> None:
        result = self._open(requests, f"{name}@{qps:g}")
        s = summarize(result.records, result.hit_rate)
        key, at = f"{name}@{qps:g}", f"{label} @ {qps:g} req/s"
        p50, p99 = _ms(float(s["ttft_p50"])), _ms(float(s["ttft_p99"]))
        self.rows.append(_row(f"{key}_p50_ms", f"{at}: TTFT P50 (ms)", "ms", p50))
        self.rows.append(_row(f"{key}_p99_ms", f"{at}: TTFT P99 (ms)", "ms", p99, target=p99_target))
        self.rows.append(_row(f"{key}_hit", f"{at}: token hit rate", "%", result.hit_rate, "higher"))

    def shared(self) -> None:
        for qps in self.loads.params.shared_qps:
            self._sweep("shared", "shared prefix", qps, self.loads.shared(qps), 0.8)

    def rag(self) -> None:
        for qps in self.loads.params.rag_qps:
            self._sweep("rag", "RAG", qps, self.loads.rag(qps), None)

    def run_all(self, loads: Sequence[str] = LOADS) -> list[Row]:
        """Warm up, then the named loads (``LOADS``, in that order)."""
        self._closed(self.loads.warmup(), 1, "warmup")
        for name in LOADS:
            if name not in loads:
                continue
            getattr(self, name)()
            self.log(f"  {self.rows[-1]['label']}: {self.rows[-1]['value']}", file=sys.stderr, flush=True)
        self.rows.append(_row("errors", "failed requests (all loads)", "count", float(len(self.errors))))
        return self.rows


# ---- command line -----------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prism-bench peer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="run every load against one running server; writes OUT/NAME.json")
    m.add_argument("--model-id", required=True, help="the served model folder (its tokenizer.json)")
    m.add_argument("--url", required=True)
    m.add_argument("--name", required=True, help="a label, also the result file's name")
    m.add_argument("--served-model-name", default="tgi", help="the OpenAI `model` field (vLLM: its name)")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--quick", action="store_true", help="fewer requests and QPS points (about a third)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--loads", default=",".join(LOADS),
                   help=f"comma-separated subset of {','.join(LOADS)} (e.g. `clients` for throughput only)")
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


def cmd_measure(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from bench.workloads.prompts import PromptBuilder, load_tokenizer

    loads_wanted = [name.strip() for name in args.loads.split(",") if name.strip()]
    unknown = sorted(set(loads_wanted) - set(LOADS))
    if unknown or not loads_wanted:
        print(f"error: --loads takes a subset of {','.join(LOADS)}; got {args.loads!r}", file=sys.stderr)
        return 2
    params = replace(QUICK if args.quick else PeerParams(), seed=args.seed)
    loads = PeerLoads(params, PromptBuilder(load_tokenizer(args.model_id)))
    run = PeerRun(Endpoint(args.url.rstrip("/"), "completions", args.served_model_name), loads)
    rows = run.run_all(loads_wanted)
    write_result(args.out / f"{args.name}.json", args.name, args.url, params, rows, run.errors)
    for e in run.errors[:5]:
        print(f"error: {e}", file=sys.stderr)
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
    return cmd_measure(args) if args.command == "measure" else cmd_table(args)


if __name__ == "__main__":
    raise SystemExit(main())
