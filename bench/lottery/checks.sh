#!/bin/bash
# the sixth pass's checks: conversation 0.25x (seeds 0-3), 0.5x and 1x (0-1), agent 0.25x (0-1); MOON=1 adds
# Mooncake 1M and 4M. Results to /tmp/lot/res_LABEL.txt
# usage: checks.sh LABEL [moon]  (env vars pass through)
cd "$(dirname "$0")/../.."
L=$1
mkdir -p /tmp/lot; out=/tmp/lot/res_$L.txt; : > $out
for spec in "conversation 0.25 0" "conversation 0.25 1" "conversation 0.25 2" "conversation 0.25 3" "conversation 0.5 0" "conversation 0.5 1" "conversation 1 0" "conversation 1 1" "agent 0.25 0" "agent 0.25 1"; do
  set -- $spec
  r=$(PYTHONPATH=$PWD nice -n 19 .venv/bin/prism-bench replay-workload --workload $1 --capacity-x $2 --window 32 --utilization 0.8 --configs qas+dart --seed $3 2>&1 | tail -1)
  echo "$1 $2 s$3 $(echo "$r" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print("%.2f %.2f %.3f"%(100*d["hit_rate"],100*d["belady_hit_rate"],d["ratio"]))')" >> $out
done
if [ "$MOON" = 1 ]; then
  for c in 1000000 4000000; do
    r=$(PYTHONPATH=$PWD nice -n 19 .venv/bin/prism-bench replay /work/shared/traces/mooncake_synthetic_trace.jsonl --capacity-tokens $c 2>&1 | grep "qas+dart")
    echo "moon $c $r" >> $out
  done
fi
cat $out
