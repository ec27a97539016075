"""A grid folder made by an earlier version of the code is found by the same keys: every run key, run folder, data
folder, DDPM folder, DDPM start, detector start, crop bank, variation folder and training list of a small fixed grid,
hard-coded from the code as it was when they were written. A change that moves any of them makes every cached grid
run again: make it on purpose (a new key version), never by accident."""
import json, random
from pathlib import Path

import pytest

from synthkit.detect import DetectConfig
from synthkit.files import config_hash
from synthkit.testing import toy_dataset
from synthkit.grid.config import GridConfig, plan, run_key, run_dir_of, fingerprint
from synthkit.grid.lineage import parts_of
from synthkit.grid.products import SplitProducts
from synthkit.grid.lists import assemble, lists_key
from synthkit.grid.starts import start_of, ddpm_start_folder

# every setting that reaches a key, precision and device given so that no key depends on this machine
CFG = GridConfig(
    splits=('split_1',), conditions=('baseline', '+2', '+1@0.5', 'classic+2', 'paste+1', 'harmonized+1', '+2:checked'),
    seeds=(0, 1), generator='ddpm', gen_steps=10,
    ddpm=dict(crop=32, channels=(16, 32), layers_per_block=1, norm_groups=8, batch=2, steps=2, minutes=None), ddpm_start=3,
    generator_options=dict(dtype='fp32', device='cpu'), tiles=dict(size=32, overlap=0), start='pretrained',
    pretrain=dict(scenes=25, steps=2), paste=dict(k=2, margin=2), label_check=dict(conf=0.5), passes=2,
    detect=DetectConfig(imgsz=64, batch=8, steps=12, warmup_steps=0, dtype='fp32'))

# The keys of the code as it was before synthkit/experiment.py became synthkit.grid, with one deliberate change since:
# the DDPM start no longer learns from any split's extra pool (an independent test set), so the start, the DDPMs
# fine-tuned from it, their variations and the runs that train on them have new keys. Every other key is the old one.
FINGERPRINT, START = 'fc9a706e0fa28a2e', 'pretrained:8275e2db61fc6c78'
RUNS = {
    'split_1-baseline-s0': '2aa0ba3c5526cc83', 'split_1-+2-s0': '326e7396a81e66ba', 'split_1-+1@0.5-s0': '034c938b897fdd9a',
    'split_1-classic+2-s0': '748b7c3877e16f88', 'split_1-paste+1-s0': '94fc1b1d6a73d7bc',
    'split_1-harmonized+1-s0': 'd69c7498c5ecac63', 'split_1-+2-checked-s0': '04cccf761e46225a',
    'split_1-baseline-s1': 'd7b28e659eb889d9', 'split_1-+2-s1': 'affa412ae26de0e5', 'split_1-+1@0.5-s1': '4afcbe2bfb43e2ca',
    'split_1-classic+2-s1': '3a22758ed9c063f7', 'split_1-paste+1-s1': '40ab33339224d6ab',
    'split_1-harmonized+1-s1': '372b98a202f1c922', 'split_1-+2-checked-s1': '185333c92a162f06'}
FOLDERS = {
    0: dict(real='data/split_1-s0-f1b260a4', ddpm='ddpm/split_1-s0-6b404f12', bank='synth/split_1-s0/bank-3a4840d5',
            diffusion_03='synth/split_1-s0/diffusion-00f316b0', diffusion_05='synth/split_1-s0/diffusion-e11859d8',
            classic='synth/split_1-s0/classic-609b655a', paste='synth/split_1-s0/paste-ed13d1c2',
            harmonized='synth/split_1-s0/harmonized-33d67fda', labelcheck='synth/split_1-s0/labelcheck-7800aed6f3.json',
            lists_baseline='a3e83f2cd7652a0c', lists_classic='3d4e18395d6480a0'),
    1: dict(real='data/split_1-s1-3a63c195', ddpm='ddpm/split_1-s1-577f5141', bank='synth/split_1-s1/bank-d6f6ee74',
            diffusion_03='synth/split_1-s1/diffusion-c9de61b7', diffusion_05='synth/split_1-s1/diffusion-2c89a536',
            classic='synth/split_1-s1/classic-a71d5c9c', paste='synth/split_1-s1/paste-f7f178c0',
            harmonized='synth/split_1-s1/harmonized-4dd113df', labelcheck='synth/split_1-s1/labelcheck-7800aed6f3.json',
            lists_baseline='c85ea8f2b4c0a391', lists_classic='0f05eb113f9ad260')}


def deal(ds, seed, sizes=None):   # 8 / 4 / 4 and 4 images in no part: the extra pool
    ids = sorted(ds.ids); random.Random(seed).shuffle(ids)
    return {'split_1': dict(train=ids[:8], val=ids[8:12], test=ids[12:16])}


@pytest.fixture
def no_training(monkeypatch):
    "The DDPM trainer and the simulator stand-ins: the folders are named before anything is trained."
    import synthkit.ddpm as dd, synthkit.ddpm_train as dt, synthkit.sarsim as ss
    from synthkit.data.items import Dataset
    def train(ds, out, cfg, progress=True, device='cpu', dtype='auto', start=None):
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out)/dd.CONFIG_FILE).write_text(json.dumps(dict(step=cfg.steps, complete=True, model=cfg.model_dict()))); (Path(out)/'unet').mkdir(exist_ok=True); return Path(out)
    monkeypatch.setattr(dt, 'train_ddpm', train)
    monkeypatch.setattr(ss, 'simulate', lambda out, n=1, **k: Dataset([], ['ship']))


def test_a_grid_folder_is_found_by_the_same_keys(tmp_path, no_training):
    from synthkit.data.formats import load_dataset
    from synthkit.data.tiles import native_imgsz
    out = tmp_path/'grid'
    weights = tmp_path/'weights.pt'; weights.write_bytes(b'weights')   # the label check's verdicts are keyed by the detector's bytes
    toy = load_dataset(toy_dataset(tmp_path/'toy', n=20, size=64, seed=1).parent)
    assert fingerprint(toy) == FINGERPRINT
    key, start_weights, start = start_of(toy, CFG, out, deal)
    assert key == START and start.folder == out/'pretrain'/'start-8275e2db61fc'
    specs = plan(CFG, FINGERPRINT, start_key=key, start_weights=start_weights, eval_imgsz=native_imgsz(toy))
    assert {s.name: run_key(s) for s in specs} == RUNS and [s.name for s in specs] == list(RUNS)
    assert [run_dir_of(s, out) for s in specs] == [out/'runs'/f'{n}-{k[:10]}' for n, k in RUNS.items()]
    ddpm_start = ddpm_start_folder(toy, CFG, out, deal)
    assert ddpm_start == out/'ddpm-start'/'start-7365ad8628e0'
    for seed, want in FOLDERS.items():
        spec = next(s for s in specs if s.seed == seed)
        parts = parts_of(deal(toy, seed)['split_1'], toy, True)
        prep = SplitProducts(toy, spec, parts, out); prep.ddpm_start = ddpm_start
        real = prep.real()
        got = dict(real=real, ddpm=prep.ddpm_folder(), bank=prep.bank(), diffusion_03=prep.folder('diffusion', 0.3),
                   diffusion_05=prep.folder('diffusion', 0.5), classic=prep.folder('classic', None),
                   paste=prep.folder('paste', None), harmonized=prep.folder('harmonized', 0.3),
                   labelcheck=prep.verdicts_file(weights, dict(conf=0.5)))
        assert {k: str(v.relative_to(out)) for k, v in got.items()} == {k: v for k, v in want.items() if not k.startswith('lists')}
        for cond in ('baseline', 'classic+2'):   # the drawn training lists (paths relative to the grid's folder)
            s = next(x for x in specs if x.seed == seed and x.condition == cond)
            rd = run_dir_of(s, out)
            assemble(s, real, parts, None if cond == 'baseline' else prep, rd)
            assert lists_key(rd, s.detect_config(), real, out) == want[f'lists_{cond.split("+")[0]}'], (seed, cond)
