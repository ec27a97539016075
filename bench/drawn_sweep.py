"""The drawn ships' guidance × strength sweep on one split of a real dataset (issue: ships that are not in the data).

For each (guidance, strength): the grid cell (baseline, paste+2, drawn+2) of the standard preset on `--split`, seed
`--seed`, then the instance scorecard of the drawn ships — TSTR mAP50, near-copies, verified share, KID — beside the
pasted crops'. Everything is cached in `--out` (the case study's own folder works: its baselines are reused).

    .venv/bin/python bench/drawn_sweep.py --data ../shared/data/ssdd-dev --out results/ssdd-standard-v2
    # a design: any preset override, its rows in a file of their own
    .venv/bin/python bench/drawn_sweep.py ... --strengths 1.0 --guidances 2 --set layout_ddpm.layout_masks=footprint \
        --json drawn-footprint.json
"""
import argparse, json, time
from pathlib import Path

from synthkit.casestudy import drawn_sweep, parse_sets

ap = argparse.ArgumentParser()
ap.add_argument('--data', required=True); ap.add_argument('--out', required=True)
ap.add_argument('--split', default='split_2'); ap.add_argument('--seed', type=int, default=0)
ap.add_argument('--guidances', default='1,2,4'); ap.add_argument('--strengths', default='0.8,1.0')
ap.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', help='a preset override, as case-study --set')
ap.add_argument('--json', default='drawn-sweep.json', help='file (in --out) the rows are written to')
a = ap.parse_args()
t0 = time.time()
rows = drawn_sweep(a.data, a.out, [float(x) for x in a.guidances.split(',')], [float(x) for x in a.strengths.split(',')],
                   split=a.split, seed=a.seed, progress=False, **parse_sets(a.set))
Path(a.out, a.json).write_text(json.dumps(rows, indent=1))
f = lambda v, s: '—' if v is None else format(v, s)
print(f'| guidance | strength | ships | near-copies | novelty | verified | KID | TSTR mAP50 | drawn+2 − paste+2 (one seed) |')
print('|---|---|---|---|---|---|---|---|---|')
for r in rows:
    print(f"| {f(r['guidance'], 'g')} | {f(r['strength'], 'g')} | {r['n']} | {f(r['near_copies'], '.0%')} | {f(r['novelty'], '.3f')} | "
          f"{f(r['verified'], '.0%')} | {f(r['kid'], '.4f')} | {f(r['tstr'], '.3f')} | {f(r['drawn_minus_paste'], '+.3f')} |")
print(f'{(time.time() - t0) / 60:.1f} min')
