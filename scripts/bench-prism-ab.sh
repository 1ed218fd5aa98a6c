#!/usr/bin/env bash
# Two prism-serve code trees, live, on one model folder: each round starts prism-launcher (defaults, private
# socket and port) from tree A, measures it with `prism-bench peer measure`, stops it, then the same for tree B;
# rounds alternate which tree goes first. Prints one table per round, A / B (also OUT/table-rN.md).
#   usage: scripts/bench-prism-ab.sh MODEL_DIR NAME_A:TREE_A NAME_B:TREE_B [ROUNDS]
#     TREE: a checkout of this repository (absolute path) with its gRPC stubs built (`PYTHONPATH=. python -m
#           proto.build`), e.g. `git archive main | tar -x -C /tmp/base`; it runs with PYTHONPATH=TREE.
#   env: OUT (default bench-out/prism-ab), SEED (0), QUICK=1 for --quick, LOADS (a subset for --loads, e.g.
#        LOADS=clients for the 32-client throughput only; default all)
# Run from the repository root with the project's venv active. One server at a time, each stopped (its process
# group) on exit, error or Ctrl-C.
set -euo pipefail
[ $# -ge 3 ] || { sed -n 2,11p "$0"; exit 2; }
MODEL=$(cd "$1" && pwd); A=$2; B=$3; ROUNDS=${4:-1}
OUT=${OUT:-bench-out/prism-ab}; SEED=${SEED:-0}; FLAGS=(); [ "${QUICK:-0}" = 1 ] && FLAGS=(--quick)
[ -n "${LOADS:-}" ] && FLAGS+=(--loads "$LOADS")
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd); HERE=$(pwd)
port() { python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PGID=""
stop() {
  [ -n "$PGID" ] || return 0
  kill -TERM -- "-$PGID" 2>/dev/null || true
  for _ in $(seq 60); do kill -0 -- "-$PGID" 2>/dev/null || { PGID=""; return 0; }; sleep 1; done
  kill -KILL -- "-$PGID" 2>/dev/null || true; PGID=""
}
trap stop EXIT INT TERM
run() {  # NAME TREE ROUND
  local P SOCK; P=$(port); SOCK=$(mktemp -d)
  # NOTE: setsid as the background job itself, so that $! is the server's process group (stop kills it)
  PYTHONPATH="$2" setsid prism-launcher --model-id "$MODEL" --hostname 127.0.0.1 --port "$P" \
    --shard-uds-path "$SOCK/shard" --master-port "$(port)" > "$OUT/$1-r$3.log" 2>&1 &
  PGID=$!
  until curl -sf "http://127.0.0.1:$P/health" > /dev/null; do
    kill -0 "$PGID" 2>/dev/null || { tail -30 "$OUT/$1-r$3.log"; exit 1; }; sleep 1
  done
  echo "$(date -u +%T) $1 round $3, load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/run.txt"
  (cd "$HERE" && python -m bench.cli peer measure --model-id "$MODEL" --url "http://127.0.0.1:$P" \
     --name "$1-r$3" --out "$OUT" --seed "$SEED" "${FLAGS[@]}")
  stop
}
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then first=$A; second=$B; else first=$B; second=$A; fi
  run "${first%%:*}" "${first#*:}" "$r"
  run "${second%%:*}" "${second#*:}" "$r"
  echo "end of round $r, load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/run.txt"
  python -m bench.cli peer table "$OUT" --ours "${A%%:*}-r$r" --theirs "${B%%:*}-r$r" | tee "$OUT/table-r$r.md"
done
