"""Drawn-ship designs, fast: the share of new ships the baseline detector finds and the share of near-copies, without
training detectors. For one cell of a case-study folder (its layout DDPM, crop bank, baseline detector and training
tiles): one output per tile for the first `--tiles` tiles, per design given as `--design NAME:KEY=VALUE,...` (generator
options and knobs: strength, steps, guidance, window, pad, prior_width, model=FOLDER).

    .venv/bin/python bench/drawn_designs.py --out results/ssdd-standard-v2 --cell split_2-s0 --design g2:guidance=2 --design g4:guidance=4
"""
import argparse, ast, time
from pathlib import Path

import numpy as np

from synthkit.data.formats import load_dataset
from synthkit.drawn import DrawnShipsGenerator
from synthkit.generators import GenParams
from synthkit.instances import ship_patch, ship_patches, nearest, near_copy_threshold, new_ship_boxes, ship_groups
from synthkit.paste import CropBank

ap = argparse.ArgumentParser()
ap.add_argument('--out', required=True); ap.add_argument('--cell', default='split_2-s0'); ap.add_argument('--tiles', type=int, default=120)
ap.add_argument('--design', action='append', default=[]); ap.add_argument('--seed', type=int, default=0)
a = ap.parse_args()
root = Path(a.out)
tag, seed = a.cell.rsplit('-s', 1)
model = sorted((root/'layout').glob(f'{a.cell}-*'))[0]
bank_dir = sorted((root/'synth'/a.cell).glob('bank-*'))[0]
real = sorted((root/'data').glob(f'{a.cell}-*'))[0]
weights = sorted((root/'runs').glob(f'{tag}-baseline-s{seed}-*'))[0]/'detector'/'train'/'weights'/'last.pt'
ds = load_dataset(real/'data.yaml', check_pixels=False)
tiles = [it for it in ds if it.meta.get('split') == 'train'][:a.tiles]
bank = CropBank.load(bank_dir)
refs = np.stack([ship_patch(c.image, c.box) for c in bank.crops]); thr = near_copy_threshold(refs, groups=ship_groups(bank.crops))
print(f'{a.cell}: {len(tiles)} tiles, bank {len(bank)} crops, near-copy threshold {thr:.3f}, detector {weights}')
print('| design | ships | verified | near-copies | novelty | s / output |\n|---|---|---|---|---|---|')
for d in a.design:
    name, _, kv = d.partition(':')
    opts = {k: ast.literal_eval(v) if v[:1] in '0123456789-([' or v in ('True', 'False', 'None') else v
            for k, v in (p.split('=', 1) for p in kv.split(',') if p)}
    knobs = {k: opts.pop(k) for k in ('strength', 'steps', 'guidance') if k in opts}
    m = opts.pop('model', model)
    g = DrawnShipsGenerator(m, bank, detector=weights, empty='copy', looks=8, **opts)
    p = GenParams(**{'strength': 1.0, 'steps': 10, 'guidance': 2.0, **knobs, 'seed': a.seed})
    t0, placed, kept, pats = time.time(), 0, 0, []
    for it in tiles:
        o = g.generate_labelled(it.read(), it.boxes, it.cls, params=p, source_id=it.id)[0]
        placed += o.info['drawn']['placed']; kept += o.info['drawn']['kept']
        pats += list(ship_patches(o[0], new_ship_boxes(o[1], o.info)))
    dist = nearest(np.stack(pats), refs) if pats else np.array([])
    print(f'| {name} | {placed} | {kept / max(placed, 1):.0%} | {(dist < thr).mean() if len(dist) else float("nan"):.0%} | '
          f'{np.median(dist) if len(dist) else float("nan"):.3f} | {(time.time() - t0) / len(tiles):.2f} |', flush=True)
