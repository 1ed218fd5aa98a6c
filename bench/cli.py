"""``prism-bench``: compare | dp | calibrate | replay | replay-workload | sweep | floor | router-overhead |
peer.

    prism-bench compare --mode sim --workload zipf-rag --cost-model qwen3-4b-a800 --qps 4,5,6,7 \\
        --configs fcfs+lru,lpm+lru,qas+dart --out out/4b
    prism-bench compare --mode live --model-id DIR --workload zipf-rag --qps 1,2 --configs ... --out out/live
    prism-bench dp --replicas 16 --trace PATH --qps 1,2,4,6 --out dp16.json   (bench.dp_sim: replica routers)
    prism-bench calibrate --model-id DIR --out measured.json      (then --cost-model measured:measured.json)
    prism-bench replay ...            (bench.replay: hit rate vs the Belady bound, no timing)
    prism-bench floor ...             (bench.floor: hit ceiling and TTFT P99 floor of any policy)
    prism-bench router-overhead ...   (bench.router_overhead)
    prism-bench peer measure|pair|table ... (bench.peer_run: side by side with vLLM, scripts/bench-vs-vllm.sh)
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bench.cost_model import ANALYTIC_NAMES
from bench.tier_timing import TierTiming
from bench.workload_args import add_workload_args, floats, workload_spec
from prism_cache.tiers import TIER_POLICIES, TierConfig

if TYPE_CHECKING:
    from router_py.scheduling.replica_choice import ReplicaChoiceParams

# their modules parse their own arguments
LAZY = ("replay", "replay-workload", "sweep", "floor", "router-overhead", "peer")


def _compare_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="configurations side by side over one workload and QPS sweep")
    p.add_argument("--mode", choices=("sim", "live"), default="sim")
    p.add_argument("--qps", type=floats, default=None, help="comma list; a trace without it keeps its times")
    p.add_argument("--configs", default="fcfs+lru,lpm+lru,qas+dart",
                   help="scheduler+policy list; shorthands hotprefix, lookahead-lru")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--scheduler-param", action="append", default=[], metavar="KEY=VALUE",
                   help="scheduler/policy knob for every configuration (e.g. qas_max_wait_s=1); repeatable")
    add_workload_args(p)
    s = p.add_argument_group("simulator")
    s.add_argument("--cost-model", default="qwen3-4b-a800",
                   help=" | ".join((*ANALYTIC_NAMES, "measured:PATH")))
    s.add_argument("--kv-capacity-tokens", type=int, default=None,
                   help="override the GPU-derived KV capacity")
    s.add_argument("--max-batch-prefill-tokens", type=int, default=8192)
    s.add_argument("--max-batch-size", type=int, default=None)
    s.add_argument("--block-size", type=int, default=16)
    s.add_argument("--host-capacity-tokens", type=int, default=0, help="host KV tier in tokens (0: none)")
    s.add_argument("--disk-capacity-tokens", type=int, default=0, help="disk KV tier in tokens (0: none)")
    s.add_argument("--tier-policy", default="dart", choices=TIER_POLICIES, help="placement across KV tiers")
    s.add_argument("--host-read-gbps", type=float, default=25.0, help="host -> device bandwidth, GB/s")
    s.add_argument("--disk-read-gbps", type=float, default=3.0, help="disk read bandwidth, GB/s")
    s.add_argument("--no-tier-overlap", dest="tier_overlap", action="store_false",
                   help="load promoted KV before the prefill instead of layer by layer under it")
    s.add_argument("--prefetch-window", type=int, default=4,
                   help="waiting requests whose disk-tier KV is prefetched to the host (0: off)")
    s.add_argument("--no-prefill-done", dest="prefill_done", action="store_false",
                   help="publish prompts to the tree only at release (TGI), not when their prefill ends "
                        "(SGLang and our batcher)")
    lv = p.add_argument_group("live")
    lv.add_argument("--model-id", default=None, help="model folder (its tokenizer.json builds the prompts)")
    lv.add_argument("--api", choices=("generate_stream", "completions"), default="generate_stream")
    lv.add_argument("--url", default=None, help="an already running server instead of launching one")
    lv.add_argument("--launcher", default="prism-launcher", help="command that starts a server")
    lv.add_argument("--launcher-args", default="", help="extra launcher arguments (one string)")


def _dp_parser(sub: argparse._SubParsersAction) -> None:
    from bench.dp_routers import ROUTERS

    p = sub.add_parser("dp", help="replica routers side by side over N simulated replicas (bench.dp_sim)")
    p.add_argument("--replicas", type=int, default=16)
    p.add_argument("--routers", default=",".join(ROUTERS), help="comma list of " + ", ".join(ROUTERS))
    p.add_argument("--qps", type=floats, required=True, help="comma list of offered loads (req/s)")
    p.add_argument("--trace", default=None, help="shorthand for --workload trace:PATH")
    p.add_argument("--config", default="qas+dart", help="each replica's scheduler+policy")
    p.add_argument("--out", type=Path, required=True, help="JSON file of the rows")
    p.add_argument("--cost-model", default="qwen3-4b-a800")
    p.add_argument("--kv-capacity-tokens", type=int, default=None, help="per replica")
    p.add_argument("--max-batch-prefill-tokens", type=int, default=8192)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--prism-param", action="append", default=[], metavar="KEY=VALUE",
                   help="ReplicaChoiceParams field (max_imbalance_tokens, decode_tokens, written_half_life, "
                        "home_share, home_stride_tokens, home_entries)")
    p.add_argument("--losses", action="store_true",
                   help="also where the hit rate goes: prefixes seen before, cached anywhere, cached on and "
                        "routed to the chosen replica (bench.dp_losses)")
    add_workload_args(p)


def _calibrate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="measure our live shard and fit a cost model (measured:PATH)")
    p.add_argument("--model-id", default=None, help="launch prism-launcher on this model folder")
    p.add_argument("--url", default=None, help="or measure a running server (needs --model-id's tokenizer)")
    p.add_argument("--launcher-args", default="")
    p.add_argument("--lengths", type=lambda t: [int(x) for x in t.split(",")], default=[32, 128, 256, 512])
    p.add_argument("--batches", type=lambda t: [int(x) for x in t.split(",")], default=[1, 2, 4, 8])
    p.add_argument("--out", type=Path, required=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prism-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    _compare_parser(sub)
    _dp_parser(sub)
    _calibrate_parser(sub)
    for name in LAZY:
        sub.add_parser(name, help=f"see prism-bench {name} --help", add_help=False)
    return p


# ---- compare ------------------------------------------------------------------------------------------


def scheduler_params(pairs: Sequence[str]) -> dict[str, float]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--scheduler-param {pair!r} is not KEY=VALUE")
        out[key.strip()] = float(value)
    return out


def _print_row(row: dict[str, object]) -> None:
    print(f"  {row['config']:<22} qps={row['qps']:<8} ttft p50={row['ttft_p50']:.3f}s "
          f"p99={row['ttft_p99']:.3f}s hit={100 * float(row['hit_rate']):.1f}% errors={row['errors']}",
          file=sys.stderr, flush=True)


def _run_compare(args: argparse.Namespace) -> list[dict[str, object]]:
    from bench import compare, configs
    from bench.cost_model import make_cost_model
    from bench.server import LaunchSpec
    from bench.simulator import SimConfig

    spec, names = workload_spec(args), configs.parse_configs(args.configs)
    qps, params = args.qps or [None], scheduler_params(args.scheduler_param)
    if args.qps is None and not spec.self_timed:
        raise SystemExit(f"--qps is required for {args.workload} (it has no arrival times of its own)")
    if args.mode == "sim":
        cost = make_cost_model(args.cost_model)
        tiers = TierConfig(
            args.host_capacity_tokens // args.block_size, args.disk_capacity_tokens // args.block_size,
            args.tier_policy,
        )
        sim = SimConfig(
            max_batch_prefill_tokens=args.max_batch_prefill_tokens,
            max_batch_total_tokens=args.kv_capacity_tokens,
            max_batch_size=args.max_batch_size,
            prefill_done=args.prefill_done,
            tiers=tier_timing(cost, args) if tiers.enabled else None,
            prefetch_window=args.prefetch_window,
        )
        setup = compare.SimSetup(cost, args.block_size, sim, args.kv_capacity_tokens, args.warmup, tiers)
        factory = lambda c, n, b, t=None: configs.make(c, n, b, params, t)  # noqa: E731
        return compare.compare_sim(spec, qps, names, setup, factory, progress=_print_row)
    if not args.model_id:
        raise SystemExit("--mode live needs --model-id (the served model folder)")
    extra = [*shlex.split(args.launcher_args), *(f"--scheduler-param={k}={v}" for k, v in params.items())]
    launch = LaunchSpec(args.model_id, tuple(shlex.split(args.launcher)), tuple(extra), log_dir=args.out)
    live = compare.LiveSetup(launch, args.api, args.url, args.warmup)
    return compare.compare_live(spec, qps, names, live, _print_row)


def tier_timing(cost: object, args: argparse.Namespace) -> TierTiming:
    """The tiers' bandwidths for an analytic cost model (its model's KV bytes and layers)."""
    model = getattr(cost, "model", None)
    if model is None:
        raise SystemExit("KV tiers in the simulator need an analytic cost model (its KV bytes per token)")
    return TierTiming(
        model.kv_bytes_per_token * args.block_size, model.layers, args.host_read_gbps * 1e9,
        args.disk_read_gbps * 1e9, args.tier_overlap,
    )


def _json_safe(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]


def cmd_compare(args: argparse.Namespace) -> int:
    from bench import plots, report

    args.out.mkdir(parents=True, exist_ok=True)
    rows = _run_compare(args)
    (args.out / "results.json").write_text(json.dumps(_json_safe(rows), indent=1) + "\n", encoding="utf-8")
    title = f"{args.workload} ({args.mode}{', ' + args.cost_model if args.mode == 'sim' else ''})"
    plots.write_plots(rows, args.out, title)
    text = report.render(rows)
    (args.out / "report.txt").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


# ---- dp ---------------------------------------------------------------------------------------------------


def _prism_params(pairs: Sequence[str]) -> ReplicaChoiceParams:
    from router_py.scheduling.replica_choice import ReplicaChoiceParams

    default = ReplicaChoiceParams()
    try:
        return ReplicaChoiceParams(
            **{k: type(getattr(default, k))(v) for k, v in scheduler_params(pairs).items()}
        )
    except (AttributeError, TypeError, ValueError) as e:
        raise SystemExit(f"--prism-param: {e}") from None


def cmd_dp(args: argparse.Namespace) -> int:
    from bench import configs, dp_sim
    from bench.compare import SimSetup
    from bench.cost_model import make_cost_model
    from bench.simulator import SimConfig
    from bench.workloads import build, timed

    if args.trace:
        args.workload = f"trace:{args.trace}"
    spec = workload_spec(args)
    base = build(spec)
    routers = [r.strip() for r in args.routers.split(",") if r.strip()]
    setup = SimSetup(make_cost_model(args.cost_model), args.block_size,
                     SimConfig(args.max_batch_prefill_tokens, args.kv_capacity_tokens),
                     args.kv_capacity_tokens, args.warmup)
    rows = dp_sim.sweep(routers, lambda q: timed(spec, base, q), args.qps, setup, args.replicas, _print_dp_row,
                        config=configs.canonical(args.config), prism=_prism_params(args.prism_param),
                        losses=args.losses)
    lines = [dp_sim.table(rows), *dp_sim.verdict(rows)]
    out = {"command": shlex.join(["prism-bench", *sys.argv[1:]]), "rows": _json_safe(rows), "summary": lines[1:]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


def _print_dp_row(row: dict[str, object]) -> None:
    print(f"  {row['router']:<15} qps={row['qps']:<6} ttft p50={row['ttft_p50']:.3f}s p99={row['ttft_p99']:.3f}s "
          f"hit={100 * float(row['hit_rate']):.2f}%", file=sys.stderr, flush=True)  # type: ignore[arg-type]


# ---- calibrate ----------------------------------------------------------------------------------------


def cmd_calibrate(args: argparse.Namespace) -> int:
    from bench import calibrate
    from bench.server import LaunchSpec, LiveServer
    from bench.workloads.prompts import PromptBuilder, load_tokenizer

    if not args.model_id:
        raise SystemExit("calibrate needs --model-id (its tokenizer builds the prompts)")
    builder, tag = PromptBuilder(load_tokenizer(args.model_id)), f"cal{time.time_ns()}"

    def measure(url: str) -> int:
        samples = calibrate.prefill_samples(url, builder, args.lengths, tag)
        samples += calibrate.decode_samples(url, builder, args.batches, min(args.lengths), tag)
        cost = calibrate.fit(samples, calibrate.server_capacity(url))
        cost.save(args.out)
        print(json.dumps(cost.__dict__, indent=1))
        return 0

    if args.url:
        return measure(args.url)
    extra = tuple(shlex.split(args.launcher_args))
    launch = LaunchSpec(args.model_id, extra_args=extra, log_dir=args.out.parent)
    with LiveServer(launch, "fcfs", "lru") as url:
        return measure(url)


# ---- lazily wired subcommands -------------------------------------------------------------------------


def _lazy(command: str, argv: list[str]) -> int:
    if command == "replay":
        from bench import replay

        p = argparse.ArgumentParser(prog="prism-bench replay")
        replay.add_arguments(p)
        return int(replay.run(p.parse_args(argv)))
    if command == "replay-workload":
        from bench import replay_workload

        return int(replay_workload.main(argv))
    if command == "sweep":
        from bench import sweep

        return int(sweep.main(argv))
    if command == "floor":
        from bench import floor

        return int(floor.main(argv))
    if command == "peer":
        from bench import peer_run

        return int(peer_run.main(argv))
    from bench import router_overhead

    return int(router_overhead.main(argv))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LAZY:
        return _lazy(argv[0], argv[1:])
    args = parser().parse_args(argv)
    commands = {"compare": cmd_compare, "dp": cmd_dp, "calibrate": cmd_calibrate}
    return commands[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
