"""SDEdit sampling options of the in-domain DDPM side by side: solver, timestep spacing and η.

Trains a small DDPM with the current training (EMA, cosine learning rate, t_max for the strength) and makes variations
of held-out tiles with each option at the same strength, steps and seeds; prints per option:

- the timesteps it evaluates the UNet at and the starting noise σ₀ (`synthkit.sdedit.noise_sigma`, grey levels);
- SSIM / PSNR to the source (`synthkit.metrics.ssim_psnr`), SSIM between two variations of one source (lower: more diverse);
- the sea's local variance in the variation over the source's (`synthkit.sdedit.speckle_ratio`; speckle kept = 1.0), as the
  geometric mean over outputs and its range, apart for speckled sea and for calm sea (the near-black sea of many
  ssdd-dev chips, speckle under 5 grey levels), and the share of speckled-sea outputs within ±20 %;
- the shift of the mean sea level (grey levels) and seconds per output.

`--data ssdd` (default): ssdd-dev, trained on 80 % of its images; 160 px tiles of the rest with a ship and ≥ 50 % open sea
(simulated scenes when ssdd-dev is absent). `--data sim`: flat simulated sea (`synthkit.sarsim`, one speckle texture,
no swell or land), where a short run learns the texture, so what is left is the sampler's doing.

    .venv/bin/python bench/ddpm_sampling.py                       # ~5 min on 2 cores, most of it training
    .venv/bin/python bench/ddpm_sampling.py --data sim            # ~3 min
    .venv/bin/python bench/ddpm_sampling.py --model /tmp/m        # keeps the model: a second run only samples

Timings on a shared machine move with its load; the quality columns don't depend on it.
"""
from __future__ import annotations
import argparse, itertools, sys, tempfile, time
from pathlib import Path

import numpy as np

from synthkit.offline import setup_offline
setup_offline()
import torch

from synthkit.data.items import find_dev_data
from synthkit.ddpm import DDPMConfig
from synthkit.sdedit import DDPMGenerator, noise_sigma, sea_mask, speckle_ratio, t_max_for
from synthkit.ddpm_train import train_ddpm
from synthkit.images import to_unit
from synthkit.metrics import ssim_psnr


FLAT_SEA = dict(land_p=0.0, looks=(2, 2), sea_state=(0.0, 0.0), range_falloff=0.0, sea_median=(40.0, 0.0), white_point=(30.0, 30.0))

# (solver, spacing, η): today's sampler first
OPTIONS = [('ddim', 'trailing', 0.0), ('ddim', 'trailing', 1.0), ('ddim', 'quadratic', 0.0), ('ddim', 'cubic', 0.0),
           ('dpm++2m', 'trailing', 0.0), ('dpm++2m', 'quadratic', 0.0), ('dpm++2m', 'cubic', 0.0), ('dpm++2m', 'cubic', 0.5),
           ('dpm++2m', 'cubic', 1.0)]


def dataset(tmp: Path, kind: str):
    "(dataset, training ids, held-out ids, name): ssdd-dev split 80/20 by position, else simulated scenes (flat sea for 'sim')."
    dev = find_dev_data() if kind == 'ssdd' else None
    if dev is not None:
        from synthkit.data.formats import load_dataset
        ds = load_dataset(dev)
        return ds, [i for k, i in enumerate(ds.ids) if k % 5], [i for k, i in enumerate(ds.ids) if k % 5 == 0], 'ssdd-dev'
    from synthkit.sarsim import SceneParams, simulate
    params = SceneParams(**FLAT_SEA, width=(192, 192), aspect=(1.0, 1.0), height=(192, 192)) if kind == 'sim' else SceneParams(land_p=0.0)
    ds = simulate(tmp/'sim', n=32, seed=0, params=params, progress=False, workers=1)
    return ds, ds.ids[:24], ds.ids[24:], 'flat simulated sea' if kind == 'sim' else 'simulated scenes (ssdd-dev absent)'


def sea_std(x: np.ndarray, boxes) -> float:
    "The source's speckle: the square root of its sea's mean local variance (7 px windows), in grey levels."
    from scipy import ndimage as ndi
    m = ndi.binary_erosion(sea_mask(x, boxes), iterations=3)
    return float(np.sqrt((ndi.uniform_filter(x * x, 7) - ndi.uniform_filter(x, 7) ** 2)[m].mean()) * 255)


def sea_tiles(ds, ids, n: int, size: int) -> list:
    """(tile, boxes, speckle in grey levels) of `size` px: per image the window with most open sea that holds a ship; half
    of `n` from calm sea (speckle < CALM grey levels, the near-black sea of many ssdd-dev chips), half from speckled sea."""
    found = []
    for i in ids:
        it = ds[i]
        x = to_unit(it.read(), grey=True)[0]
        h, w = x.shape
        if min(h, w) < size: continue
        best = None
        for top in range(0, h - size + 1, size // 2):
            for left in range(0, w - size + 1, size // 2):
                b = np.asarray(it.boxes, np.float32).reshape(-1, 4) - [left, top, left, top]
                b = b[(b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= size) & (b[:, 3] <= size)]
                if not len(b): continue
                tile = x[top:top + size, left:left + size]
                sea = sea_mask(tile, b).mean()
                if sea >= 0.5 and (best is None or sea > best[0]): best = (sea, tile.copy(), b)
        if best: found.append((best[1], best[2], sea_std(best[1], best[2])))
    calm, speckled = [t for t in found if t[2] < CALM], [t for t in found if t[2] >= CALM]
    k = min(len(calm), n // 2)
    return calm[:k] + speckled[:n - k]


CALM = 5.0   # grey levels


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--data', choices=('ssdd', 'sim'), default='ssdd')
    ap.add_argument('--model', default=None, help='model folder (kept; trained or resumed to --train-steps)')
    ap.add_argument('--train-steps', type=int, default=None, help='training iterations (default: 250 on ssdd-dev, 300 on flat sea)')
    ap.add_argument('--sources', type=int, default=8, help='tiles: half of calm sea (where there is such), half speckled')
    ap.add_argument('--n', type=int, default=2, help='variations per source')
    ap.add_argument('--size', type=int, default=None, help='tile side (px; default 160 on ssdd-dev, 128 on flat sea)')
    ap.add_argument('--strength', type=float, default=0.3)
    ap.add_argument('--steps', type=int, nargs='+', default=[10, 25], help='gen_steps to compare')
    ap.add_argument('--threads', type=int, default=1, help='torch threads (1 is fastest for this small UNet on a shared 2-core machine)')
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix='ddpm-sampling-'))
    ds, train_ids, held, name = dataset(tmp, a.data)
    size = a.size or (128 if a.data == 'sim' else 160)
    cfg = DDPMConfig(channels=(16, 32, 32, 64), norm_groups=8, crop=64, batch=16, warmup=20, minutes=None,
                     steps=a.train_steps or (300 if a.data == 'sim' else 250), t_max=t_max_for(a.strength, min(a.steps)))
    folder = Path(a.model) if a.model else tmp/'ddpm'
    t = time.time()
    train_ddpm(ds.subset(train_ids), folder, cfg, progress=False)
    print(f'{name}: trained {cfg.steps} iterations on {len(train_ids)} images (t_max={cfg.t_max}, ema={cfg.ema}, '
          f'lr {cfg.lr_decay}) in {time.time() - t:.0f} s (0 s: the --model folder was already trained)')
    tiles = sea_tiles(ds, held, a.sources, size)
    calm = np.array([sd < CALM for _, _, sd in tiles])
    print(f'{len(tiles)} held-out {size} px tiles with ≥ 50 % open sea and a ship ({calm.sum()} of calm sea: speckle < {CALM:g} grey levels; '
          f'the others {min([sd for _, _, sd in tiles if sd >= CALM] or [0]):.0f}–{max([sd for _, _, sd in tiles] or [0]):.0f}); strength {a.strength}, '
          f'{a.n} variations each, {torch.get_num_threads()} thread(s)\n')
    xs, bs = [x for x, _, _ in tiles], [b for _, b, _ in tiles]
    seeds = [[1000 * k + j for j in range(a.n)] for k in range(len(xs))]
    def ratios(r):
        r = r[np.isfinite(r)]
        return f'{np.exp(np.log(r).mean()):.2f} ({r.min():.2f}–{r.max():.2f})' if len(r) else '—'
    print('| steps | solver | spacing | η | timesteps | σ₀ (grey) | SSIM to source | PSNR (dB) | SSIM between variations '
          '| sea variance ratio, speckled sea | within ±20 % | sea variance ratio, calm sea | sea level shift | s / output |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')
    for steps, (solver, spacing, eta) in itertools.product(a.steps, OPTIONS):
        g = DDPMGenerator(folder, solver=solver, spacing=spacing, eta=eta)
        t = time.perf_counter()
        ys = g.sdedit_many(xs, a.strength, steps, seeds)
        dt = (time.perf_counter() - t) / len(ys)
        rows = [(ys[k * a.n + j], xs[k], bs[k], calm[k]) for k in range(len(xs)) for j in range(a.n)]
        q = np.array([ssim_psnr(y, x) for y, x, _, _ in rows])
        div = np.mean([ssim_psnr(ys[k * a.n], ys[k * a.n + 1])[0] for k in range(len(xs))]) if a.n > 1 else float('nan')
        r = np.array([speckle_ratio(y, x, b) for y, x, b, _ in rows]); c = np.array([c for *_, c in rows])
        shift = np.array([255 * (y[m].mean() - x[m].mean()) for y, x, b, _ in rows for m in [sea_mask(x, b)]])
        rs = r[~c & np.isfinite(r)]
        print(f'| {steps} | {solver} | {spacing} | {eta:g} | {g.timesteps(a.strength, steps)} | {noise_sigma(a.strength, steps, g):.0f} | '
              f'{q[:, 0].mean():.3f} | {q[:, 1].mean():.1f} | {div:.3f} | {ratios(r[~c])} | '
              f'{np.mean((rs >= 0.8) & (rs <= 1.2)) if len(rs) else float("nan"):.0%} | {ratios(r[c])} | {shift.mean():+.1f} | {dt:.2f} |')
        sys.stdout.flush()


if __name__ == '__main__':
    main()
