import json, math, sys
from collections import defaultdict
sys.path.insert(0, '/work/wt/dart')
from prism_cache.session_return import SessionReturn
rows = [json.loads(l) for l in open('/work/shared/traces/mooncake_synthetic_trace.jsonl')]
cap = int(float(sys.argv[1]) / 512)
H = 1.5 * cap  # horizon in observed blocks
sr = SessionReturn(cap, 1.5, kept=lambda: set())
# pass 1: clock per request, uses
clock = 0; starts = []
for r in rows:
    starts.append(clock); clock += len(r['hash_ids'])
nxt = {}  # (req idx, pos) -> next use clock
last = {}
for i in range(len(rows)-1, -1, -1):
    for p in rows[i]['hash_ids']:
        if p in last: nxt[(i,p)] = last[p]
        last[p] = starts[i]
uses = defaultdict(int)
recs = []  # (weight, features..., outcome)
for i, r in enumerate(rows):
    ids = r['hash_ids']
    sr.observe(ids)
    n = len(ids)
    for j, p in enumerate(ids):
        uses[p] += 1
        s = sr.record_of(p)
        P = sr.return_probability(s.turns, s.branch, s.depth if s.turns == 1 else None)
        shared = p in sr.shared
        nu = nxt.get((i,p)); y = nu is not None and nu - starts[i] <= H
        recs.append((uses[p], P, shared, s.branch, s.turns, n - j, n, y))
def auc(scores):
    # scores: list of (score, y); probability score(pos) > score(neg)
    from itertools import groupby
    scores.sort(key=lambda t: t[0])
    pos = sum(y for _, y in scores); neg = len(scores) - pos
    rank = 0; acc = 0.0; i = 0
    while i < len(scores):
        j = i
        while j < len(scores) and scores[j][0] == scores[i][0]: j += 1
        npos = sum(y for _, y in scores[i:j]); nneg = (j - i) - npos
        acc += npos * (rank) + npos * nneg / 2
        rank += nneg; i = j
    return acc / (pos * neg)
print('positions', len(recs), 'reuse rate', sum(r[-1] for r in recs)/len(recs))
tab = defaultdict(lambda: [0,0])
for u, P, sh, br, t, e, _n, y in recs:
    k = (min(u,5), sh)
    tab[k][0] += 1; tab[k][1] += y
for k in sorted(tab): print('uses,shared', k, tab[k][0], round(tab[k][1]/tab[k][0],3))
tab = defaultdict(lambda: [0,0])
for u, P, sh, br, t, e, _n, y in recs:
    k = (round(math.log2(P)) if P>0 else -99)
    tab[k][0] += 1; tab[k][1] += y
for k in sorted(tab): print('log2 P', k, tab[k][0], round(tab[k][1]/tab[k][0],3))
print('AUC model P', auc([(r[1], r[-1]) for r in recs if not r[2]]))
print('AUC uses', auc([(r[0], r[-1]) for r in recs if not r[2]]))
print('AUC uses then P', auc([(r[0]+r[1], r[-1]) for r in recs if not r[2]]))
print('AUC P + uses x', auc([(math.log(r[1]) + math.log(r[0])*2, r[-1]) for r in recs if not r[2]]))
def cellauc(name, f):
    tab = defaultdict(lambda: [0,0])
    for r in recs:
        if r[2]: continue
        c = f(r); tab[c][0]+=1; tab[c][1]+=r[-1]
    print(name, 'cells', len(tab), 'AUC', round(auc([(tab[f(r)][1]/tab[f(r)][0], r[-1]) for r in recs if not r[2]]),4))
L = lambda r: 0
cellauc('uses', lambda r: min(r[0],5))
cellauc('P', lambda r: r[1])
cellauc('uses,P', lambda r: (min(r[0],5), r[1]))
cellauc('uses,branch,turn', lambda r: (min(r[0],5), r[3], min(r[4],4)))
cellauc('uses,e', lambda r: (min(r[0],5), min(r[5],4)))
cellauc('uses,e,P', lambda r: (min(r[0],5), min(r[5],4), r[1]))
cellauc('uses,e,branch,turn', lambda r: (min(r[0],5), min(r[5],4), r[3], min(r[4],4)))
print('---')
lp = lambda r: round(math.log2(r[1]))
cellauc('P bucket', lp)
cellauc('uses,Pb', lambda r: (min(r[0],5), lp(r)))
cellauc('uses,e,Pb', lambda r: (min(r[0],5), min(r[5],4), lp(r)))
print('---')
recs2 = recs
lb = lambda r: None

cellauc('uses,len', lambda r: (min(r[0],5), (r[6]*32).bit_length()>>1))
cellauc('uses,len,branch', lambda r: (min(r[0],5), (r[6]*32).bit_length()>>1, r[3]))
cellauc('uses,len,branch,turn', lambda r: (min(r[0],5), (r[6]*32).bit_length()>>1, r[3], min(r[4],4)))
cellauc('len,branch,turn', lambda r: ((r[6]*32).bit_length()>>1, r[3], min(r[4],4)))
tab = defaultdict(lambda: [0,0])
for r in recs:
    if r[2]: continue
    c = (min(r[0],5), (r[6]*32).bit_length()>>1); tab[c][0]+=1; tab[c][1]+=r[-1]
for c in sorted(tab): print(c, tab[c][0], round(tab[c][1]/tab[c][0],3))
