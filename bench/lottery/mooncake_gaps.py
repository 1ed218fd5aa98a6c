"""Gap CDF of block reuses on the Mooncake trace (512-token ids, trace order): F(T) and F(T)/T, T in admissions.

    python -m bench.lottery.mooncake_gaps
"""
import json, bisect
rows = [json.loads(l) for l in open('/work/shared/traces/mooncake_synthetic_trace.jsonl')]
nxt = {}
gaps = []  # per block-use: gap to next use (None = never)
last = {}
n = len(rows)
uses = []
for i, r in enumerate(rows):
    for h in r["hash_ids"]:
        if h in last:
            gaps.append(i - last[h])
        last[h] = i
    uses.append(len(r["hash_ids"]))
total_uses = sum(uses)
never = total_uses - len(gaps)
gaps.sort()
print("block uses", total_uses, "reused", len(gaps), "never %.2f" % (never / total_uses))
for T in (16, 32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3000):
    F = bisect.bisect_right(gaps, T) / total_uses
    print("T %5d F %.3f F/T*1000 %.3f" % (T, F, 1000 * F / T))
