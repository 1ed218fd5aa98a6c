#!/usr/bin/env bash
# Side-by-side benchmark of prism-serve against vLLM's CPU build on the same model folder (issue 10 item 6):
# starts vLLM (the shared setup script, prefix caching on, defaults) and prism-launcher (defaults), measures both
# point by point, alternately (`prism-bench peer pair`: a drifting shared machine hits both sides of each ratio),
# stops both; then prints one table with the ratios prism / vLLM (also OUT/table.md).
#   usage: scripts/bench-vs-vllm.sh DIR [--quick] [--prism-only]
#     DIR           the peer folder of setup-vllm-cpu.sh (DIR/venv, DIR/model; installed there if missing)
#     --quick       fewer requests and QPS points (about 2 minutes instead of about 5, start-up included)
#     --prism-only  measure prism only and reuse OUT/vllm.json from an earlier run
#   env: OUT (default bench-out/vs-vllm), VLLM_SETUP (default /work/shared/peer/setup-vllm-cpu.sh), SEED (0),
#        LOADS (default all: cold,clients,shared,rag,chat,agent; e.g. LOADS=clients for throughput alone),
#        PEER_ARGS (more `prism-bench peer` options, e.g. "--clients 16 --client-prompt-len 1000 --client-output 512"),
#        VLLM_ARGS (more `vllm serve` flags, e.g. "--dtype float32" on a CPU without bf16 arithmetic)
# Run from the repository root with the project's venv active (prism-launcher on PATH, bench importable).
# Only one server is driven at a time (the idle one takes about 1% of a core or less); both are stopped (their whole
# process groups) on exit, error or Ctrl-C.
set -euo pipefail
[ $# -ge 1 ] || { sed -n 2,10p "$0"; exit 2; }
D=$(mkdir -p "$1" && cd "$1" && pwd); shift
QUICK=(); PRISM_ONLY=0
for a in "$@"; do
  case "$a" in
    --quick) QUICK=(--quick) ;;
    --prism-only) PRISM_ONLY=1 ;;
    *) echo "unknown option $a" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-bench-out/vs-vllm}; SETUP=${VLLM_SETUP:-/work/shared/peer/setup-vllm-cpu.sh}; SEED=${SEED:-0}
LOADS=${LOADS:-cold,clients,shared,rag,chat,agent}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
port() { python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PGIDS=()
stop() {  # SIGTERM the servers' process groups, SIGKILL after 60 s
  local g
  for g in "${PGIDS[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  for g in "${PGIDS[@]}"; do
    for _ in $(seq 60); do kill -0 -- "-$g" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$g" 2>/dev/null || true
  done
  PGIDS=()
}
trap stop EXIT INT TERM
read -r -a EXTRA <<< "${PEER_ARGS:-}"
common=(--model-id "$D/model" --out "$OUT" --seed "$SEED" --loads "$LOADS" "${QUICK[@]}" "${EXTRA[@]}")
echo "start $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/run.txt"

if [ "$PRISM_ONLY" = 0 ]; then
  V=$(port)
  if [ -n "${VLLM_ARGS:-}" ]; then  # the setup script takes no flags: install with it, serve with a copy given them
    bash "$SETUP" "$D"
    sed "s|--enable-prefix-caching|--enable-prefix-caching $VLLM_ARGS|" "$SETUP" > "$OUT/setup-vllm-args.sh"
    SETUP="$OUT/setup-vllm-args.sh"
  fi
  bash "$SETUP" "$D" serve "$V"  # installs if needed; returns when /health answers
  PGIDS+=("$(cat "$D/vllm.pid")")  # started with setsid: its PID is its process group
fi
P=$(port)
setsid prism-launcher --model-id "$D/model" --hostname 127.0.0.1 --port "$P" > "$OUT/prism.log" 2>&1 &
PRISM_PG=$!
PGIDS+=("$PRISM_PG")
until curl -sf "http://127.0.0.1:$P/health" > /dev/null; do
  kill -0 "$PRISM_PG" 2>/dev/null || { tail -30 "$OUT/prism.log"; exit 1; }; sleep 1
done
if [ "$PRISM_ONLY" = 0 ]; then
  python -m bench.cli peer pair "${common[@]}" --server vllm "http://127.0.0.1:$V" tiny \
    --server prism "http://127.0.0.1:$P" tgi
else
  python -m bench.cli peer measure "${common[@]}" --url "http://127.0.0.1:$P" --name prism
fi
stop

echo "end $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg), ${SECONDS}s" | tee -a "$OUT/run.txt"
python -m bench.cli peer table "$OUT" --ours prism --theirs vllm
