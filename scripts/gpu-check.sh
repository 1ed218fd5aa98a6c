#!/usr/bin/env bash
# The GPU checks of issue 10 (item 5), as one bounded script for a CUDA host whose Python has torch (CUDA) and
# triton. Each stage has its own time limit and log; a failed stage does not stop the next one.
#   usage: scripts/gpu-check.sh OUT STAGE...
#   stages:
#     tests    the `gpu`-marked tests with compiled Triton kernels (shard on CUDA, graphs, kernels vs reference)
#     kernels  python -m flash_kernels.bench: fractions of the measured bf16 matmul peak and copy bandwidth
#     shard    prism-shard bench on an 8B-class Llama (random weights, bf16): prefill, decode eager / graphs,
#              90%-cached 2,048-token prefill against cold
#     profile  python -m shard.bench_profile on the 8B-class model: torch profiles of a cold and a 90%-cached
#              2,048-token prefill and of a 32-request decode step
#     smoke    the launcher on the tiny demo model on CUDA: greedy over HTTP equals transformers' fp32
#     serve    the launcher on the 8B-class model, with and without CUDA graphs, measured by
#              `prism-bench peer measure --quick`; then one table of the two (graphs / eager)
#   env: SERVE_SIZE (demo size of shard/profile/serve, default 8b); WHEELS (a folder of wheels installed with
#        --target first, for what the host lacks: `pip download --no-deps --only-binary=:all: --python-version
#        3.12 --platform manylinux2014_x86_64 -d DIR PKG==V` for each of the project's dependencies missing
#        there); T_TESTS, T_KERNELS, T_SHARD, T_SERVE (seconds per stage)
# Run from the repository root. docs/performance.md ("GPU figures") has what it printed on an H200.
set -uo pipefail
[ $# -ge 2 ] || { sed -n 2,19p "$0"; exit 2; }
OUT=$(mkdir -p "$1" && cd "$1" && pwd); shift
ROOT=$(pwd)
PY=${PYTHON:-python3}

prepare() {  # packages, stubs and console scripts, without touching the host's site-packages
  if [ -n "${WHEELS:-}" ] && [ -d "$WHEELS" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/prism-site \
      "$WHEELS"/*.whl || return 1
    export PYTHONPATH="/tmp/prism-site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  else
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  fi
  "$PY" -m proto.build || return 1
  mkdir -p /tmp/prism-bin
  for pair in prism-launcher:router_py.launch.launcher prism-shard:shard.cli prism-bench:bench.cli \
              prism-demo-model:shard.demo_model; do
    printf '#!/bin/sh\nexec %s -m %s "$@"\n' "$(command -v "$PY")" "${pair#*:}" > "/tmp/prism-bin/${pair%%:*}"
    chmod +x "/tmp/prism-bin/${pair%%:*}"
  done
  export PATH="/tmp/prism-bin:$PATH" PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1
  "$PY" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__,
    torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")' >> "$OUT/gpu.txt" 2>&1
  cat "$OUT/gpu.txt"
}

stage() {  # NAME SECONDS CMD...: run (a command or a function of this file) with a limit, log to OUT/NAME.log
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s) $(date -u +%T)"
  timeout -k 10 "$limit" bash -c '"$@"' _ "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  # a server left behind by a stage that ran out of time (its own session) would hold the GPU's memory
  pkill -KILL -f "router_py.launch.launcher|shard.cli serve|router_py.cli " 2> /dev/null
  tail -n 40 "$OUT/$name.log"
  echo "== $name: exit $rc $(date -u +%T)" | tee -a "$OUT/status.txt"
}

model8b() {  # SERVE_SIZE (default 8b) lets a CPU dry run use a small size
  local size=${SERVE_SIZE:-8b}
  [ -f "/tmp/prism-$size/config.json" ] || prism-demo-model "/tmp/prism-$size" --size "$size" --config-only > /dev/null
  echo "/tmp/prism-$size"
}

wait_healthy() {  # PORT PID LOG
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$1/health" > /dev/null && return 0
    kill -0 "$2" 2> /dev/null || { tail -n 30 "$3"; return 1; }
    sleep 1
  done
  return 1
}

with_server() {  # NAME MODEL LAUNCHER_ARGS CMD...: start prism-launcher, run CMD (with $URL), stop the launcher
  local name=$1 model=$2 extra=$3 port=$((3000 + RANDOM % 2000)) rc=1; shift 3
  # shellcheck disable=SC2086  # LAUNCHER_ARGS is a list of words
  setsid prism-launcher --model-id "$model" --hostname 127.0.0.1 --port "$port" \
    --shard-uds-path "/tmp/prism-$name" $extra > "$OUT/launcher-$name.log" 2>&1 &
  local pid=$! URL="http://127.0.0.1:$port"
  if wait_healthy "$port" "$pid" "$OUT/launcher-$name.log"; then
    grep -E "KV pool|Warmup" "$OUT/launcher-$name.log" | head -n 3
    "$@"
    rc=$?
  fi
  kill -TERM -- "-$pid" 2> /dev/null; sleep 3; kill -KILL -- "-$pid" 2> /dev/null
  return $rc
}

measure() {  # MODEL NAME: the peer loads against $URL
  prism-bench peer measure --model-id "$1" --url "$URL" --name "$2" --out "$OUT/peer" --quick
}

greedy_check() {  # MODEL: greedy over HTTP ($URL) equals transformers' fp32
  "$PY" scripts/gpu_smoke.py --model-id "$1" --url "$URL"
}

smoke() {  # the tiny demo model, fp32
  prism-demo-model /tmp/prism-tiny > /dev/null
  with_server smoke /tmp/prism-tiny "--dtype float32" greedy_check /tmp/prism-tiny
}

export OUT PY
export -f wait_healthy with_server measure greedy_check smoke
prepare || { echo "prepare failed"; exit 1; }
for s in "$@"; do
  case "$s" in
    tests) stage tests "${T_TESTS:-240}" "$PY" -m pytest -q -p no:cacheprovider -m gpu -o addopts="" \
             shard/tests flash_kernels/tests ;;
    kernels) stage kernels "${T_KERNELS:-120}" "$PY" -m flash_kernels.bench --backends triton --block-sizes 16 \
               --iters 10 ;;
    shard) stage shard "${T_SHARD:-120}" prism-shard bench --model-dir "$(model8b)" --load-format dummy \
             --device cuda ;;
    smoke) stage smoke 90 smoke ;;
    profile) stage profile 120 "$PY" -m shard.bench_profile --model-dir "$(model8b)" --load-format dummy \
               --device cuda ;;
    serve) M=$(model8b)
           stage serve-graphs "${T_SERVE:-150}" with_server graphs "$M" "--load-format dummy" measure "$M" graphs
           stage serve-eager "${T_SERVE:-150}" with_server eager "$M" "--load-format dummy --enforce-eager" \
             measure "$M" eager
           "$PY" -m bench.cli peer table "$OUT/peer" --ours graphs --theirs eager | tee "$OUT/serve-table.md" ;;
    *) echo "unknown stage $s" ;;
  esac
done
cat "$OUT/status.txt"
