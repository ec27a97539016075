"""Generation speed: `synthesize` against the loop a user would write by hand (one model call per output).

Side by side in one run, on the same model, images and parameters, for the in-domain DDPM default and a tiny SD
img2img pipeline, at strength 0.3 and 0.6. Prints images/s, the ratio, UNet evaluations per image, time per UNet
evaluation and the share of time spent inside the UNet, then what each speed-up (batching, bf16 autocast, inference_mode,
channels-last, SDPA, 64-wide attention heads) is worth on its own. `ddpm default` rows: DDPMGenerator as a user gets it
(dtype='auto': bfloat16 autocast where synthkit.precision measured it faster on this machine, else float32; the line
above the table says what it measured); `ddpm fp32` rows: forced float32. Both against the same float32 hand loop (the
diffusers-docs way).

    .venv/bin/python bench/generate.py                  # ~5 min on 2 cores (128 px); --size 64 --steps 10: ~1 min
    .venv/bin/python bench/generate.py --sources 4 --n 4 --size 128 --repeats 2 --ddpm MODEL_DIR

Timings on a shared machine move with its load: each pair is measured interleaved and the best of `--repeats` kept.
"""
from __future__ import annotations
import argparse, contextlib, os, sys, tempfile, time
from pathlib import Path

import numpy as np

from synthkit.offline import setup_offline
setup_offline()
import torch
from PIL import Image

from synthkit.data.items import Item, Dataset, find_dev_data
from synthkit.generators import GenParams
from synthkit.images import read_image, save_image, to_unit
from synthkit.synthesize import synthesize


class UNetMeter:
    "Counts UNet evaluations (batch rows) and the time spent inside the UNet's forward."
    def __init__(self, unet):
        self.unet, self.rows, self.calls, self.seconds = unet, 0, 0, 0.0
        self._orig = unet.forward
        def fwd(sample, *a, **kw):
            t = time.perf_counter()
            try: return self._orig(sample, *a, **kw)
            finally: self.seconds += time.perf_counter() - t; self.rows += len(sample); self.calls += 1
        unet.forward = fwd
    def reset(self): self.rows, self.calls, self.seconds = 0, 0, 0.0


def bench_data(folder: Path, sources: int, size: int) -> Dataset:
    "`sources` grey size×size crops around ships of ssdd-dev images (toy speckle images when it is absent)."
    dev = find_dev_data()
    if dev is None:
        from synthkit.testing import speckle_toy
        return speckle_toy(folder, n=sources, size=size)
    from synthkit.data.formats import load_dataset
    ds = load_dataset(dev)
    items = []
    for it in [it for it in ds if it.n_boxes][:sources]:
        a = it.read(); a = a if a.ndim == 2 else a[..., 0]
        h, w = a.shape
        x0, y0, x1, y1 = it.boxes[0]
        top = int(np.clip((y0 + y1) / 2 - size / 2, 0, max(0, h - size))); left = int(np.clip((x0 + x1) / 2 - size / 2, 0, max(0, w - size)))
        c = a[top:top + size, left:left + size]
        b = it.boxes - [left, top, left, top]
        keep = (b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= c.shape[1]) & (b[:, 3] <= c.shape[0])
        p = save_image(np.ascontiguousarray(c), folder/f'{it.id}.png')
        items.append(Item(p, c.shape[1], c.shape[0], b[keep], it.cls[keep], it.id))
    return Dataset(items, ds.names)


def timed(fn):
    t = time.perf_counter(); fn(); return time.perf_counter() - t


# ---- the hand-written loops ---------------------------------------------------------------------------------------
def hand_ddpm(folder, ds, n, params, out):
    "SDEdit as one would write it from the diffusers docs: one output per call, no_grad, a fresh scheduler, save a PNG."
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
    unet = hand_ddpm.unet
    for it in ds:
        x = to_unit(it.read(), grey=True)[0]
        for k in range(n):
            sched = DDIMScheduler.from_config(DDPMScheduler.load_config(Path(folder)/'scheduler'), timestep_spacing='trailing',
                                              clip_sample=False, set_alpha_to_one=True)
            sched.set_timesteps(params.steps)
            n_run = int(params.steps * params.strength)
            ts = sched.timesteps[len(sched.timesteps) - n_run:]
            h, w = x.shape; m = 2 ** (len(unet.config.block_out_channels) - 1)
            src = torch.nn.functional.pad(torch.from_numpy(x)[None, None] * 2 - 1, (0, -w % m, 0, -h % m), mode='reflect')
            noise = torch.randn(src.shape, generator=torch.Generator().manual_seed(1000 * k + 7))
            with torch.no_grad():
                y = sched.add_noise(src, noise, ts[:1])
                for t in ts: y = sched.step(unet(y, t).sample, t, y).prev_sample
            a = ((y[0, 0, :h, :w].clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
            Image.fromarray(a).save(out/f'{it.id}_{k}.png')


def hand_sd(pipe, ds, n, params, out):
    "StableDiffusionImg2ImgPipeline called once per output, as in the diffusers docs."
    for it in ds:
        im = Image.fromarray(it.read()).convert('RGB')
        for k in range(n):
            r = pipe(prompt=params.prompt, image=im, strength=params.strength, guidance_scale=params.guidance,
                     num_inference_steps=params.steps, generator=torch.Generator().manual_seed(1000 * k + 7))
            r.images[0].save(out/f'{it.id}_{k}.png')


# ---- one comparison ---------------------------------------------------------------------------------------------
def compare(label, ours_fn, hand_fn, meter_ours, meter_hand, n_images, repeats, tmp):
    best = {}
    for rep in range(repeats):
        for name, fn, meter in (('synthesize', ours_fn, meter_ours), ('hand loop', hand_fn, meter_hand)):
            d = Path(tempfile.mkdtemp(dir=tmp)); meter.reset()
            s = timed(lambda: fn(d))
            if name not in best or s < best[name][0]: best[name] = (s, meter.rows, meter.seconds)
    (so, ro, uo), (sh, rh, uh) = best['synthesize'], best['hand loop']
    print(f'{label:<34} synthesize {n_images / so:6.2f} img/s   hand loop {n_images / sh:6.2f} img/s   ratio {sh / so:4.2f}x   '
          f'UNet evals/img {ro / n_images:5.1f} vs {rh / n_images:5.1f}   ms/eval-row {1000 * uo / max(ro, 1):6.1f} vs {1000 * uh / max(rh, 1):6.1f}   '
          f'in UNet {uo / so:4.0%} vs {uh / sh:4.0%}')
    return sh / so


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--sources', type=int, default=3)
    ap.add_argument('--n', type=int, default=4, help='variations per source')
    ap.add_argument('--size', type=int, default=128, help='image side (px)')
    ap.add_argument('--steps', type=int, default=20)
    ap.add_argument('--strengths', default='0.3,0.6')
    ap.add_argument('--repeats', type=int, default=2)
    ap.add_argument('--ddpm', default=None, help='a trained DDPM folder (default: the default architecture, 1 training step)')
    ap.add_argument('--threads', type=int, default=None, help='torch threads (default: torch\'s; 1 is faster on a busy machine)')
    ap.add_argument('--skip-sd', action='store_true')
    ap.add_argument('--skip-ablation', action='store_true')
    a = ap.parse_args(argv)
    strengths = [float(s) for s in a.strengths.split(',')]
    if a.threads: torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix='bench-gen-'))
    ds = bench_data(tmp/'data', a.sources, a.size)
    N = len(ds) * a.n
    print(f'{len(ds)} sources x {a.n} variations = {N} images of {a.size} px, {a.steps} steps; torch {torch.__version__}, '
          f'{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores')

    # DDPM default
    from synthkit.ddpm import DDPMConfig
    from synthkit.sdedit import DDPMGenerator
    from synthkit.ddpm_train import train_ddpm
    from diffusers import UNet2DModel
    folder = a.ddpm or train_ddpm(ds, tmp/'ddpm', DDPMConfig(steps=1, batch=2), progress=False)
    gen = DDPMGenerator(folder)   # the default: dtype='auto'
    hand_ddpm.unet = UNet2DModel.from_pretrained(Path(folder)/'unet').eval()
    mh = UNetMeter(hand_ddpm.unet)
    dt = gen.describe()['dtype']
    print(f'DDPM: {sum(p.numel() for p in gen.unet.parameters()) / 1e6:.1f} M parameters ({folder}); default dtype here: {dt}')
    from synthkit.precision import measured_precision
    m = measured_precision('ddpm')
    print(f"dtype='auto' here: {m['dtype']} (" + (f"bf16 measured {m['speedup']}x the speed of fp32 on {m['machine']})" if m['speedup']
          else f"no native bf16 on {m['machine']})"))
    ratios = {}
    for label, g in ((f'ddpm default ({dt})', gen), ('ddpm fp32', DDPMGenerator(folder, dtype='fp32'))):
        mo = UNetMeter(g.unet)
        for s in strengths:
            p = GenParams(strength=s, steps=a.steps, seed=0)
            ratios[f'{label} {s}'] = compare(f'{label} strength {s}', lambda d: synthesize(ds, g, a.n, p, d, batch_size=a.n, progress=False),
                                             lambda d: hand_ddpm(folder, ds, a.n, p, d), mo, mh, N, a.repeats, tmp)

    if not a.skip_ablation:
        print('\nDDPM default, strength 0.3: each speed-up alone (generate() on every source, best of repeats; 1.00 = everything on)')
        p = GenParams(strength=0.3, steps=a.steps, seed=0)
        imgs = [it.read() for it in ds]
        def run(g, bs): 
            for i, im in enumerate(imgs): g.generate(im, n=a.n, params=p, source_id=str(i), batch_size=bs)
        def best(fn): return min(timed(fn) for _ in range(a.repeats))
        base = best(lambda: run(gen, a.n))
        rows = [('batch of n -> batch of 1', lambda: run(gen, 1))]
        g32 = DDPMGenerator(folder, dtype='fp32')
        if gen.bf16: rows.append(('bf16 autocast -> float32', lambda: run(g32, a.n)))
        g_cf = DDPMGenerator(folder, channels_last=False)
        rows.append(('channels-last -> default memory format', lambda: run(g_cf, a.n)))
        @contextlib.contextmanager
        def no_inference_mode():
            orig = torch.inference_mode; torch.inference_mode = torch.no_grad
            try: yield
            finally: torch.inference_mode = orig
        def with_no_grad():
            with no_inference_mode(): run(gen, a.n)
        rows.append(('inference_mode -> no_grad', with_no_grad))
        from diffusers.models.attention_processor import Attention, AttnProcessor
        g_at = DDPMGenerator(folder)
        for m in g_at.unet.modules():
            if isinstance(m, Attention): m.set_processor(AttnProcessor())
        rows.append(('SDPA attention -> classic attention', lambda: run(g_at, a.n)))
        if a.ddpm is None:   # the default architecture, against the same one with 8-wide heads
            g_h8 = DDPMGenerator(train_ddpm(ds, tmp/'ddpm-h8', DDPMConfig(steps=1, batch=2, head_dim=8), progress=False))
            rows.append(('head_dim 64 -> 8 (16 heads; older models)', lambda: run(g_h8, a.n)))
        print(f'  {"everything on":<40} {base:6.2f} s')
        for name, fn in rows:
            t = best(fn); print(f'  {name:<40} {t:6.2f} s  ({t / base:4.2f}x the time)')

    if not a.skip_sd:
        from synthkit.testing import build_tiny_sd_img2img
        from synthkit.diffusion import SDImg2ImgGenerator
        from diffusers import StableDiffusionImg2ImgPipeline
        sd_dir = build_tiny_sd_img2img(tmp/'tiny-sd')
        sd = SDImg2ImgGenerator(sd_dir, device='cpu')
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(sd_dir, safety_checker=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        mo, mh = UNetMeter(sd.pipe.unet), UNetMeter(pipe.unet)
        print(f'\ntiny SD img2img ({sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.2f} M UNet parameters), guidance 7.5 '
              '(classifier-free guidance: 2 UNet rows per image per step)')
        for s in strengths:
            p = GenParams(strength=s, steps=a.steps, seed=0, prompt='a SAR image of a ship')
            ratios[f'sd {s}'] = compare(f'sd-img2img strength {s}', lambda d: synthesize(ds, sd, a.n, p, d, batch_size=a.n, progress=False),
                                        lambda d: hand_sd(pipe, ds, a.n, p, d), mo, mh, N, a.repeats, tmp)
    print('\nratios (hand-loop time / synthesize time): ' + ', '.join(f'{k} {v:.2f}x' for k, v in ratios.items()))
    return ratios


if __name__ == '__main__':
    main()
