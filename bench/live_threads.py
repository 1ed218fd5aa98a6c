"""Output tokens/s and per-thread CPU time of a live prism-serve under the 32-client load of
:mod:`bench.peer_loads` (issue 10's throughput load), one server from one code tree.

    python -m bench.live_threads --model-id /work/peer/model [--tree DIR] [--reps 4] [--env PRISM_LOOKAHEAD=0]

Starts ``prism-launcher`` (defaults, loopback, random port, private socket dir) with ``PYTHONPATH=TREE``, warms
it up, then runs the clients load ``--reps`` times (a new seed each, so prompts start cold) and reads
``/proc/PID/task/TID/stat`` of every server process and of this client before and after: CPU seconds per
thread and per output token; also the streams' inter-token gaps. Thread CPU is what each part costs, whatever
else the machine runs; the tokens/s are wall-clock and move with the machine's load. The server is stopped
(its session) on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench.loadgen import Endpoint, run_closed
from bench.metrics import percentile
from bench.peer_loads import PeerLoads, PeerParams
from bench.server import LaunchSpec, LiveServer, free_port
from bench.workloads.prompts import PromptBuilder, load_tokenizer

TICK = os.sysconf("SC_CLK_TCK")


def descendants(root: int) -> list[int]:
    parent: dict[int, int] = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        parent[int(d)] = int(stat[stat.rfind(")") + 2 :].split()[1])
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += [c for c, p in parent.items() if p == pid]
    return out


def _process_name(pid: int) -> str:
    if pid == os.getpid():
        return "client"
    args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    program = " ".join(args[:3])  # the interpreter, the script or ``-m module``
    for known, name in (("prism-shard", "shard"), ("router_py", "router"), ("prism-launcher", "launcher")):
        if known in program:
            return name
    return Path(args[0]).name


def thread_cpu(pids: list[int]) -> dict[tuple[int, int], tuple[str, float]]:
    """(pid, tid) -> ("process/thread name", CPU seconds so far)."""
    out = {}
    for pid in pids:
        try:
            name, tids = _process_name(pid), os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()
            thread = stat[stat.find("(") + 1 : stat.rfind(")")]
            out[(pid, int(tid))] = (f"{name}/{thread} {tid}", (int(fields[11]) + int(fields[12])) / TICK)
    return out


def measure(url: str, model: str, reps: int, server_pid: int) -> None:
    params = PeerParams()
    builder = PromptBuilder(load_tokenizer(model))
    endpoint = Endpoint(url, "completions")
    asyncio.run(run_closed(endpoint, PeerLoads(params, builder).warmup(), 1, "warmup"))
    asyncio.run(run_closed(endpoint, PeerLoads(replace(params, seed=99), builder).clients(), params.clients,
                           "warm"))
    pids = descendants(server_pid) + [os.getpid()]
    before, start, rates, tokens, errors, gaps = thread_cpu(pids), time.perf_counter(), [], 0, 0, []
    for i in range(reps):
        loads = PeerLoads(replace(params, seed=100 + i), builder)
        result = asyncio.run(run_closed(endpoint, loads.clients(), params.clients, f"clients {i + 1}/{reps}"))
        done = sum(r.output_tokens for r in result.records if r.error is None)
        errors += sum(r.error is not None for r in result.records)
        gaps += [g for r in result.records if r.error is None for g in r.itl]
        rates.append(done / result.duration)
        tokens += done
    wall, after = time.perf_counter() - start, thread_cpu(pids)
    print(f"output tok/s per rep: {', '.join(f'{r:,.0f}' for r in rates)}; {tokens:,} tokens in {wall:.1f} s, "
          f"{errors} failed requests; "
          f"load average {' '.join(open('/proc/loadavg').read().split()[:3])}")
    if gaps:
        quantiles = ", ".join(f"P{q} {1e3 * percentile(gaps, q):.1f}" for q in (10, 50, 90, 99))
        print(f"inter-token gaps (ms): {quantiles}")
    rows = [(cpu - before.get(key, (name, 0.0))[1], name) for key, (name, cpu) in after.items()]
    rows = sorted((r for r in rows if r[0] >= 0.05), reverse=True)
    for cpu, name in rows:
        print(f"  {name:40s} {cpu:6.2f} s  {1e6 * cpu / tokens:6.1f} us/token")
    total = sum(cpu for cpu, _ in rows)
    print(f"  {'total':40s} {total:6.2f} s  {1e6 * total / tokens:6.1f} us/token; {total / wall:.2f} cores busy")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model-id", required=True)
    p.add_argument("--tree", default=os.getcwd(), help="the code tree to serve from (PYTHONPATH)")
    p.add_argument("--reps", type=int, default=4)
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="for the server")
    args = p.parse_args(argv)
    env = [("PYTHONPATH", str(Path(args.tree).resolve()))] + [tuple(kv.split("=", 1)) for kv in args.env]
    folder = Path(tempfile.mkdtemp(prefix="live-threads-"))
    spec = LaunchSpec(args.model_id, extra_args=("--hostname", "127.0.0.1", "--master-port", str(free_port())),
                      log_dir=folder, env=tuple(env))
    server = LiveServer(spec, "qas", "dart")  # the launcher's defaults
    with server as url:
        assert server.proc is not None
        measure(url, args.model_id, args.reps, server.proc.pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
