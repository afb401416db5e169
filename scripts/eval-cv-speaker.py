#!/usr/bin/env python3
"""Leave-one-conversation-out cross-validation of Recall's speaker boost over an evaluation dump:

    cargo run --release -p memoire-tests --bin eval -- ../shared/data/locomo-dev --dump /tmp/dump.jsonl
    python3 scripts/eval-cv-speaker.py /tmp/dump.jsonl

The dump holds each question's first 100 items with their score components. Each episode's fused
score is recovered from final = fused x speaker + w_recency x recency (for an episode importance
0.5 and confidence 1 are neutral), then re-scored with another boost and re-ranked; the metrics
are the eval's (tests/src/eval.rs `Metrics::add`), and at the configured boost they reproduce the
run's exactly. Items below rank 100 cannot rise: a boost that lifts them is under-credited.
W_REC and W_SPK must be the settings the dump was made with (recall_recency_weight,
recall_speaker_weight)."""
import json, math, re, sys
from collections import defaultdict

W_REC, W_SPK = 0.01, 0.2
rows = [json.loads(l) for l in open(sys.argv[1])]

def words(s):
    return [w.lower() for w in re.split(r'[^\w]|_', s) if w]

def names(qw, name):
    nw = words(name or '')
    return bool(nw) and any(qw[i:i+len(nw)] == nw for i in range(len(qw)-len(nw)+1))

def metrics(q, order):
    seen, lst = set(), []
    for it in order:
        for t in it['turns']:
            if t not in seen:
                seen.add(t); lst.append(t)
    ev = set(q['evidence'])
    rec = lambda k: sum(1 for t in lst[:k] if t in ev) / len(ev)
    dcg = sum(1/math.log2(i+2) for i, t in enumerate(lst[:10]) if t in ev)
    ideal = sum(1/math.log2(i+2) for i in range(min(len(ev), 10)))
    return [rec(1), rec(5), rec(10), rec(20), 1.0 if rec(10) >= 1-1e-9 else 0.0, dcg/ideal]

def rescore(q, w):
    qw = words(q['question'])
    scored = []
    for i, it in enumerate(q['items']):
        f = it['final']
        if it['kind'] == 'episode':
            name = it['session'].split('|', 1)[1] if '|' in it['session'] else ''
            m = names(qw, name)
            fused = (f - W_REC * it['recency']) / ((1 + W_SPK) if m else 1.0)
            f = fused * ((1 + w) if m else 1.0) + W_REC * it['recency']
        scored.append((-f, i, it))
    scored.sort(key=lambda x: (x[0], x[1]))
    return [s[2] for s in scored]

def evaluate(qs, w):
    per = defaultdict(list)
    for q in qs:
        m = metrics(q, rescore(q, w))
        per[q['category']].append(m); per[0].append(m)
    return {c: [sum(x[j] for x in v)/len(v) for j in range(6)] for c, v in per.items()}

grid = [round(0.1*i, 2) for i in range(0, 16)]
convs = sorted({q['conversation'] for q in rows})
print("all data: w  R@10  nDCG  multi(R@10)")
for w in grid:
    r = evaluate(rows, w)
    print(f"  {w:.1f} {r[0][2]:.4f} {r[0][5]:.4f} {r[1][2]:.4f}")
# LOCO: choose w maximising R@10 + nDCG on the other four, report on the held-out one.
held = []
for c in convs:
    train = [q for q in rows if q['conversation'] != c]
    test = [q for q in rows if q['conversation'] == c]
    best = max(grid, key=lambda w: (lambda r: r[0][2] + r[0][5])(evaluate(train, w)))
    held.append((c, best, test))
    print(f"fold {c}: chose {best}")
per = defaultdict(list)
base = defaultdict(list)
for c, best, test in held:
    for q in test:
        m = metrics(q, rescore(q, best)); per[q['category']].append(m); per[0].append(m)
        m0 = metrics(q, rescore(q, W_SPK)); base[q['category']].append(m0); base[0].append(m0)
for name, d in (("held-out", per), ("current", base)):
    r = {c: [sum(x[j] for x in v)/len(v) for j in range(6)] for c, v in d.items()}
    print(f"{name}: R@10 {r[0][2]:.4f} nDCG {r[0][5]:.4f} all@10 {r[0][4]:.4f} multi {r[1][2]:.4f} temporal {r[2][2]:.4f} open {r[3][2]:.4f} single {r[4][2]:.4f}")
