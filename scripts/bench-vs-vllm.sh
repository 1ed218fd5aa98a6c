#!/usr/bin/env bash
# Side-by-side benchmark of prism-serve against vLLM's CPU build on the same model folder (issue 10 item 6):
# starts vLLM (the shared setup script, prefix caching on, defaults), measures it, stops it; then the same for
# prism-launcher (defaults); then prints one table with the ratios prism / vLLM (also OUT/table.md).
#   usage: scripts/bench-vs-vllm.sh DIR [--quick] [--prism-only]
#     DIR           the peer folder of setup-vllm-cpu.sh (DIR/venv, DIR/model; installed there if missing)
#     --quick       fewer requests and QPS points (about 4 minutes instead of about 9)
#     --prism-only  measure prism only and reuse OUT/vllm.json from an earlier run
#   env: OUT (default bench-out/vs-vllm), VLLM_SETUP (default /work/shared/peer/setup-vllm-cpu.sh), SEED (0),
#        LOADS (default all: cold,clients,shared,rag; e.g. LOADS=clients for the throughput load alone)
# Run from the repository root with the project's venv active (prism-launcher on PATH, bench importable).
# One server runs at a time; each is stopped (its whole process group) on exit, error or Ctrl-C.
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
LOADS=${LOADS:-cold,clients,shared,rag}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
port() { python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PGID=""
stop() {  # SIGTERM the server's process group, SIGKILL after 60 s
  [ -n "$PGID" ] || return 0
  kill -TERM -- "-$PGID" 2>/dev/null || true
  for _ in $(seq 60); do kill -0 -- "-$PGID" 2>/dev/null || { PGID=""; return 0; }; sleep 1; done
  kill -KILL -- "-$PGID" 2>/dev/null || true; PGID=""
}
trap stop EXIT INT TERM
measure() {  # NAME URL [extra args]
  python -m bench.cli peer measure --model-id "$D/model" --url "$2" --name "$1" --out "$OUT" --seed "$SEED" \
    --loads "$LOADS" "${QUICK[@]}" "${@:3}"
}
echo "start $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/run.txt"

if [ "$PRISM_ONLY" = 0 ]; then
  P=$(port)
  bash "$SETUP" "$D" serve "$P"  # installs if needed; returns when /health answers
  PGID=$(cat "$D/vllm.pid")  # started with setsid: its PID is its process group
  measure vllm "http://127.0.0.1:$P" --served-model-name tiny
  stop
fi

P=$(port)
setsid prism-launcher --model-id "$D/model" --hostname 127.0.0.1 --port "$P" > "$OUT/prism.log" 2>&1 &
PGID=$!
until curl -sf "http://127.0.0.1:$P/health" > /dev/null; do
  kill -0 "$PGID" 2>/dev/null || { tail -30 "$OUT/prism.log"; exit 1; }; sleep 1
done
measure prism "http://127.0.0.1:$P"
stop

echo "end $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg), ${SECONDS}s" | tee -a "$OUT/run.txt"
python -m bench.cli peer table "$OUT" --ours prism --theirs vllm
