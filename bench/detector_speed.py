"""CPU detector training: Ultralytics' thread setting against all cores, and float32 against bfloat16 autocast.

Side by side in one run, on one grid run's data (its data.yaml: training tiles, val, whole test images) and start
weights, the same DetectConfig: (1) Ultralytics as it comes on a CPU (torch set to one thread fewer than the cores),
(2) every core torch has (what `train_detector` does now), (3) every core under bfloat16 autocast (`dtype='bf16'`).
Prints the training seconds (from Ultralytics' results.csv), the whole run's seconds, mAP50 on the test split, and the
ratio to (1).

    .venv/bin/python bench/detector_speed.py --run results/ssdd-standard/runs/split_1-baseline-s1-* --start results/ssdd-standard/pretrain/start-*/weights.pt
"""
from __future__ import annotations
import argparse, json, tempfile, time
from contextlib import contextmanager
from pathlib import Path

from synthkit.offline import setup_offline
setup_offline()

from synthkit.detect import DetectConfig, train_detector


@contextmanager
def ultralytics_threads():
    "Ultralytics' own CPU setting (cores - 1) instead of synthkit's: undoes `_cpu_compute`'s thread count for variant (1)."
    import os, torch
    import synthkit.detect as d
    orig = d._cpu_compute
    @contextmanager
    def patched(dtype='fp32'):
        with orig(dtype):
            import ultralytics.utils.torch_utils as tu
            tu.NUM_THREADS = max(1, (os.cpu_count() or 2) - 1)
            yield
    d._cpu_compute = patched
    try: yield
    finally: d._cpu_compute = orig; torch.set_num_threads(torch.get_num_threads())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--run', required=True, help="a grid run folder (with data.yaml and spec.json)")
    ap.add_argument('--start', required=True, help='the start weights (.pt) the grid fine-tuned from')
    a = ap.parse_args()
    run = Path(a.run)
    spec = json.loads((run/'spec.json').read_text())['detect']
    spec.update(model=str(Path(a.start).resolve()), extra=tuple(map(tuple, spec.get('extra', ()))))
    spec.pop('dtype', None)
    base = DetectConfig(**spec)
    variants = [('Ultralytics threads, fp32', base, True), ('all cores, fp32', base, False),
                ('all cores, bf16 autocast', base.replace(dtype='bf16'), False)]
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, cfg, ul) in enumerate(variants):
            t = time.perf_counter()
            if ul:
                with ultralytics_threads(): r = train_detector(run/'data.yaml', Path(tmp)/str(i), cfg)
            else: r = train_detector(run/'data.yaml', Path(tmp)/str(i), cfg)
            res[name] = (r.curve[-1].get('time', float('nan')), time.perf_counter() - t, r.metrics['map50'])
    t0 = res[variants[0][0]][0]
    print(f'{run.name}: {base.imgsz} px, batch {base.batch}, {base.epochs} passes')
    for name, (tr, whole, m) in res.items():
        print(f'{name:>28}: training {tr:6.1f} s ({t0 / tr:.2f}x)  whole run {whole:6.1f} s  mAP50 {m:.3f}')


if __name__ == '__main__': main()
