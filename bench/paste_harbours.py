"""Where pasted ships land on cluttered chips: the sea/land rule of `paste` checked by eye.

Ranks the chips of a dataset by clutter (the share of the image far brighter than its median after a 15 px box blur:
quays, buildings, shore), cuts a crop bank from 40 other chips, pastes k ships into each of the most cluttered ones
with and without the rule, and writes one contact sheet per setting (pasted boxes in magenta) to look at.

    python bench/paste_harbours.py --data ../shared/data/ssdd-dev --n 12 --out /tmp/harbours
"""
import argparse
from pathlib import Path

import numpy as np
from scipy.ndimage import uniform_filter

from synthkit.data.formats import load_dataset
from synthkit.paste import CropBank, paste_ships
from synthkit.grids import grid_png


def clutter(item) -> float:
    "Share of the chip much brighter (by 40 grey levels) than its median after a 15 px box blur: land, quays, buildings."
    a = item.read().astype(np.float64)
    m = uniform_filter(a.mean(2) if a.ndim == 3 else a, 15)
    return float((m > np.percentile(m, 50) + 40).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--data', default='../shared/data/ssdd-dev')
    ap.add_argument('--n', type=int, default=12, help='the most cluttered chips to paste into')
    ap.add_argument('--k', type=int, default=3)
    ap.add_argument('--tolerances', default='0.5,none', help="sea_tolerance values to compare ('none': no rule)")
    ap.add_argument('--out', default='/tmp/harbours')
    a = ap.parse_args()
    ds = load_dataset(a.data)
    ids = list(ds.ids)
    bank_ids = [ids[i] for i in np.random.default_rng(0).permutation(len(ids))[:40]]
    bank = CropBank.from_dataset(ds, bank_ids, margin=4)
    chips = sorted((i for i in ids if i not in bank_ids), key=lambda i: -clutter(ds[i]))[:a.n]
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    for tol in a.tolerances.split(','):
        t = None if tol.strip().lower() == 'none' else float(tol)
        cells, labels, placed = [], [], 0
        for j, i in enumerate(chips):
            it = ds[i]
            o = paste_ships(it.read(), it.boxes, it.cls, bank, seed=j, k=a.k, sea_tolerance=t)
            cells.append(o[0]); labels.append((o[1], o[2], o.info['paste']['pasted'])); placed += o.info['paste']['placed']
        rows = [cells[i:i + 4] for i in range(0, len(cells), 4)]
        labs = [labels[i:i + 4] for i in range(0, len(labels), 4)]
        f = out/f'harbours-tolerance-{tol.strip()}.png'
        f.write_bytes(grid_png(rows, cell_labels=labs, cell_px=380))
        print(f'sea_tolerance={t}: {placed} of {a.k * len(chips)} ships placed on the {len(chips)} most cluttered chips -> {f}')


if __name__ == '__main__':
    main()
