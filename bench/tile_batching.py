"""Variations of small tiles: one tile per model call against calls filled with tiles of several sources.

The case study makes variations of 160 px native-resolution tiles, one or two per tile. With one source per model call
that is a UNet batch of 1-2 rows; a `cross_source` generator (the DDPM) lets `synthesize` fill each call with
consecutive same-shape sources. Side by side in one run, interleaved, best of `--repeats`: the same tiles, model and
parameters, `synthesize(..., n_per_image=1)` with cross-source batching off (one tile per call, as before) and on at
batch sizes 4, 8 and 16. Prints tiles/s and the ratio to one tile per call.

    .venv/bin/python bench/tile_batching.py --tiles DATA/images/train --ddpm MODEL_DIR      # a grid's tiles and DDPM
    .venv/bin/python bench/tile_batching.py                                                # a fresh tiny DDPM on ssdd-dev tiles
"""
from __future__ import annotations
import argparse, tempfile, time
from pathlib import Path

from synthkit.offline import setup_offline
setup_offline()

from synthkit.data.formats import load_dataset
from synthkit.generators import GenParams
from synthkit.synthesize import synthesize


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--data', required=True, help='a dataset folder of tiles (e.g. a grid\'s results/.../data/split_1-s0-*/)')
    ap.add_argument('--ddpm', required=True, help='a trained DDPM folder (e.g. results/.../ddpm/split_1-s0-*/)')
    ap.add_argument('--n', type=int, default=64, help='tiles (one output each)')
    ap.add_argument('--strength', type=float, default=0.3)
    ap.add_argument('--steps', type=int, default=10)
    ap.add_argument('--batches', default='4,8,16')
    ap.add_argument('--repeats', type=int, default=2)
    a = ap.parse_args()
    from synthkit.sdedit import DDPMGenerator
    ds = load_dataset(a.data)
    ids = [i for i in ds.ids if ds[i].width == ds[i].height][:a.n]
    src = ds.subset(ids)
    gen = DDPMGenerator(a.ddpm)
    p = GenParams(strength=a.strength, steps=a.steps, seed=0)
    variants = [('1 tile per call', 8, False)] + [(f'{b} tiles per call', b, True) for b in map(int, a.batches.split(','))]
    best = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            for name, bs, cross in variants:
                gen.cross_source = cross
                t = time.perf_counter()
                synthesize(src, gen, 1, p, Path(tmp)/f'{r}-{bs}-{cross}', batch_size=bs, progress=False, parts={'train': ids})
                best[name] = min(best.get(name, 1e9), time.perf_counter() - t)
    print(f'{len(ids)} tiles of {ds[ids[0]].width} px, strength {a.strength}, {a.steps} steps, dtype {gen.describe()["dtype"]}, best of {a.repeats}')
    base = best[variants[0][0]]
    for name, *_ in variants:
        print(f'{name:>18}: {len(ids) / best[name]:6.2f} tiles/s  {base / best[name]:.2f}x')


if __name__ == '__main__': main()
