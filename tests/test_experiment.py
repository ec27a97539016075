"""synthkit.grid: the cache, the equal budget, lineage (no test image or variation of one in training), stop/resume."""
import json, random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from synthkit.errors import SynthkitError
from synthkit.detect import DetectConfig
from synthkit.testing import toy_dataset
from synthkit.grid.config import GridConfig, RunSpec, plan, run_key
from synthkit.grid.lineage import check_lineage
from synthkit.grid.products import SplitProducts
from synthkit.grid.runner import run_grid, row_fields
from synthkit.data.tiles import source_image
from synthkit.conditions import parse_condition
from synthkit.stats import summarize
import synthkit.grid.runner as runner



def deal(ds, seed, sizes=None):
    ids = sorted(ds.ids); random.Random(seed).shuffle(ids)
    return {'split_1': dict(train=ids[:8], val=ids[8:12], test=ids[12:])}


class Copier:
    "A stand-in generator: returns copies of the source and records which sources it saw."
    def __init__(self): self.seen = []
    def __call__(self, prep):
        from synthkit.generators import Generator
        seen = self.seen
        class Copy(Generator):
            name, channels = 'copy', 1
            def _run(self, x, boxes, cls, params, seeds): return [x.copy() for _ in seeds]
            def generate(self, image, boxes=None, cls=None, source_id='image', **kw):
                seen.append(source_id); return super().generate(image, boxes, cls, source_id=source_id, **kw)
        return Copy()


CFG = GridConfig(splits=('split_1',), conditions=('baseline', '+2', 'classic+2'), seeds=(0,),
                 generator='stub', passes=2, detect=DetectConfig(imgsz=64, batch=8, steps=4, warmup_steps=0))


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    from synthkit.data.formats import load_dataset
    return load_dataset(toy_dataset(tmp_path_factory.mktemp('toy')/'toy', n=16, size=64, seed=1).parent)


@pytest.fixture(scope='module')
def grid(toy, tmp_path_factory):
    out, gen = tmp_path_factory.mktemp('grid'), Copier()
    rows = run_grid(toy, CFG, out, split_fn=deal, generator_factory=gen, progress=False)
    return out, rows, gen


def test_keys_cover_the_configuration_and_nothing_else():
    specs = plan(GridConfig(), data='abc')
    assert len({run_key(s) for s in specs}) == len(specs) == 30
    base = next(s for s in specs if s.condition == 'baseline')
    assert run_key(replace(base, config=GridConfig(strength=0.6, ddpm={'steps': 9}))) == run_key(base)
    assert run_key(replace(base, config=GridConfig(detect=DetectConfig(steps=601, warmup_steps=60)))) != run_key(base)
    assert run_key(replace(base, seed=7)) != run_key(base)


def test_equal_steps_budget_in_the_plan_and_the_runs(grid):
    "Every condition trains exactly the same number of batches: a drawn list of ceil(steps / passes) batches, walked `passes` times."
    assert {s.detect_config().epochs for s in plan(GridConfig(passes=4, detect=DetectConfig(steps=500)))} == {4}
    assert {s.detect_config().epochs for s in plan(GridConfig(budget='epochs', detect=DetectConfig(epochs=7)))} == {7}
    _, rows, _ = grid
    assert {r['steps'] for r in rows} == {4} and {r['epochs'] for r in rows} == {2}     # steps=4 over 2 passes
    for r in rows:
        entries = (Path(r['run_dir'])/'train.txt').read_text().split()
        assert len(entries) == 16 == r['n_train_real'] + r['n_train_synth']           # two batches of 8 per pass
        curve = (Path(r['run_dir'])/'detector'/'train'/'results.csv').read_text().strip().splitlines()
        assert len(curve) - 1 == r['epochs']


def test_equal_steps_hold_when_ultralytics_counts_them(toy, tmp_path):
    "Ultralytics walks the drawn list with its duplicates: its own batch count per epoch is the one planned."
    import re
    cfg = replace(CFG, conditions=('baseline', 'classic+2'), passes=2, detect=CFG.detect.replace(steps=6))
    rows = run_grid(toy, cfg, tmp_path, split_fn=deal, progress=False)
    for r in rows:
        log = re.sub(r'\x1b\[[0-9;]*[A-Za-z]', '', (Path(r['run_dir'])/'detector'/'console.log').read_text().replace('\r', '\n'))
        epochs = [l for l in log.splitlines() if re.match(r'\s*\d+/\d+\s+[\d.]+G\s', l)]      # Ultralytics' training progress lines
        assert epochs and {int(m) for l in epochs for m in re.findall(r'\d+/(\d+) [\d.]+\s*(?:it/s|s/it)', l)} == {3}, r['condition']
        assert (r['steps'], r['epochs'], r['n_train_real'] + r['n_train_synth']) == (6, 2, 24)


def test_lineage_no_test_image_or_variation_in_training(grid, toy):
    out, rows, gen = grid
    test = set(deal(toy, 0)['split_1']['test'])
    assert gen.seen and not test & set(gen.seen)    # the generator never saw a test image
    for r in rows:
        rd = Path(r['run_dir'])
        y = (rd/'data.yaml').read_text()
        assert 'train.txt' in y and 'images/test' in y
        for part in ('train', 'val'):
            files = [Path(l) for l in (rd/f'{part}.txt').read_text().split()]
            assert len(files) == r[f'n_{part}_real'] + r[f'n_{part}_synth']   # entries, duplicates included
            for f in files:
                assert f.stem not in test and not any(f.stem.startswith(t) for t in test), f
                assert f.is_file()
        test_imgs = sorted(p.stem for p in Path(y.split('test: ')[1].split('\n')[0].strip('"')).iterdir())
        assert set(test_imgs) == test


def test_check_lineage_message():
    with pytest.raises(SynthkitError, match="train part holds 'v3', a variation of test image 't1'"):
        check_lineage({'train': ['a', 'v3']}, ['t1'], {'v3': 't1'})
    with pytest.raises(SynthkitError, match="val part holds 't1'"):
        check_lineage({'val': ['t1']}, ['t1'])


def test_rerun_is_all_cache_hits(grid, toy, monkeypatch):
    out, rows, _ = grid
    monkeypatch.setattr(runner, 'train_detector', lambda *a, **k: pytest.fail('a cached run was trained again'))
    assert run_grid(toy, CFG, out, split_fn=deal, generator_factory=Copier(), progress=False) == rows
    assert len(json.loads((out/'results.json').read_text())) == 3 and (out/'summary.csv').is_file()


def test_stop_then_resume_trains_only_what_is_missing(toy, tmp_path, monkeypatch):
    cfg = replace(CFG, conditions=('baseline', 'classic+1'))
    got = []
    first = run_grid(toy, cfg, tmp_path, split_fn=deal, progress=False, on_result=got.append, should_stop=lambda: len(got) >= 1)
    assert [r['condition'] for r in first] == ['baseline'] == [r['condition'] for r in got]
    trained = []
    real = runner.train_detector
    monkeypatch.setattr(runner, 'train_detector', lambda y, d, c, **k: trained.append(Path(d).parent.name) or real(y, d, c, **k))
    rows = run_grid(toy, cfg, tmp_path, split_fn=deal, progress=False)
    assert [r['condition'] for r in rows] == ['baseline', 'classic+1'] and rows[0] == first[0]
    assert len(trained) == 1 and 'classic+1' in trained[0]


def test_synthetic_share_of_the_training_entries(toy, tmp_path):
    """Every run holds every real training image; the synthetic share is the pool's N / (N + 1) (or synth_share), capped so
    the real entries still cover every real image, and reported per run; val stays real."""
    rows = run_grid(toy, replace(CFG, conditions=('baseline', 'classic+2', 'classic+10'), passes=1, detect=CFG.detect.replace(steps=4)), tmp_path, split_fn=deal, progress=False)
    assert [(r['n_train_real'], r['n_train_synth']) for r in rows] == [(32, 0), (11, 21), (8, 24)]   # 32 entries: 2/3 synthetic; 10/11 capped at 24
    assert [r['n_train_real_distinct'] for r in rows] == [8, 8, 8]                                  # all 8 real training images in every run
    assert [r['synthetic_share'] for r in rows] == [0, 0.6562, 0.75] and [r['real_exposures'] for r in rows] == [4, 1.375, 1]
    assert {r['steps'] for r in rows} == {4}                                                          # the same number of batches
    assert all(r['n_val_synth'] == 0 for r in rows)
    r, = run_grid(toy, replace(CFG, conditions=('classic+10',), passes=1, synth_share=0.25, detect=CFG.detect.replace(steps=4)), tmp_path/'b', split_fn=deal, progress=False)
    assert (r['n_train_real'], r['n_train_synth']) == (24, 8)
    assert r['n_train_synth_distinct'] == 8      # output 0 of 8 different sources before any source's output 1


def test_a_changed_generator_option_is_a_new_key():
    "Stale-cache bug: generation_fields once hashed only generator, strength, steps and dtype, so a ControlNet condition change reused old runs."
    spec = RunSpec('split_1', 0, '+2', GridConfig(generator='controlnet:/m', generator_options=dict(condition='canny')), 'x')
    keys = {run_key(replace(spec, config=replace(spec.config, generator_options=o))) for o in
            (dict(condition='canny'), dict(condition='boxes'), dict(condition='boxes', conditioning_scale=0.5), dict(condition='boxes', guidance_scale=2.0))}
    assert len(keys) == 4


def test_minimum_detectable_difference_known_answer():
    from synthkit.stats import min_detectable_difference
    from scipy import stats
    # two-sided alpha 0.05, power 0.8, 5 pairs: (t_.975,4 + t_.8,4) * sd / sqrt(5) = (2.7764 + 0.9410) * sd / 2.2361
    assert min_detectable_difference(0.02, 5) == pytest.approx(0.033249, abs=2e-6)
    assert min_detectable_difference(0.03, 10) == pytest.approx((stats.t.ppf(.975, 9) + stats.t.ppf(.8, 9)) * 0.03 / 10 ** .5)
    rows = [dict(split='s', condition=c, kind=parse_condition(c)[0], n_per_image=parse_condition(c)[1], seed=s,
                 map50=v + (0.02 * (s % 2) if c == '+2' else 0), map50_95=v, precision=v, recall=v) for c, v in [('baseline', .3), ('+2', .4)] for s in range(5)]
    S = {r['condition']: r for r in summarize(rows)}
    assert S['+2']['map50_mdd'] == pytest.approx(min_detectable_difference(S['+2']['map50_diff_std'], 5))


def test_grid_errors(toy, tmp_path):
    with pytest.raises(SynthkitError, match="condition 'x\\+2'"): GridConfig(conditions=('x+2',)).check()
    with pytest.raises(SynthkitError, match="budget='time'"): GridConfig(budget='time').check()
    with pytest.raises(SynthkitError, match="budget='steps' needs detect.steps"): GridConfig(detect=DetectConfig()).check()
    GridConfig(budget='epochs', detect=DetectConfig()).check()   # the epochs budget needs no steps
    with pytest.raises(SynthkitError, match="split 'split_2' is not one of"):
        run_grid(toy, replace(CFG, splits=('split_2',)), tmp_path, split_fn=deal, progress=False)


def test_summary_paired_difference():
    rows = [dict(split='s', condition=c, kind=parse_condition(c)[0], n_per_image=parse_condition(c)[1], seed=s,
                 map50=v + .1 * s, map50_95=v, precision=v, recall=v) for c, v in [('baseline', .3), ('+2', .4)] for s in range(3)]
    S = {r['condition']: r for r in summarize(rows)}
    assert S['+2']['map50_diff'] == pytest.approx(0.1) and S['+2']['map50_diff_std'] == pytest.approx(0, abs=1e-12)
    assert S['+2']['map50_std'] == pytest.approx(0.1) and S['+2']['n_runs'] == 3
    assert S['baseline']['map50_ci_lo'] < S['baseline']['map50_mean'] < S['baseline']['map50_ci_hi']


TINY_DDPM = dict(crop=32, channels=(16, 32), layers_per_block=1, norm_groups=8, batch=2)


def test_ddpm_trains_on_the_generator_device(toy, tmp_path, monkeypatch):
    "generator_options['device'] (and the precision it resolves to) reaches train_ddpm as well as the generator."
    import synthkit.ddpm as dd, synthkit.ddpm_train as dt
    seen, dtypes = [], []
    def fake_train(ds, out, cfg, progress=True, device='cpu', dtype='auto', start=None):
        seen.append(device); dtypes.append(dtype); Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out)/dd.CONFIG_FILE).write_text(json.dumps(dict(step=cfg.steps, complete=True, model=cfg.model_dict()))); (Path(out)/'unet').mkdir(exist_ok=True)
        return Path(out)
    monkeypatch.setattr(dt, 'train_ddpm', fake_train)
    cfg = replace(CFG, generator='ddpm', ddpm=dict(TINY_DDPM, steps=3, minutes=None), generator_options=dict(device='cuda'))
    spec = RunSpec('split_1', 0, '+2', cfg, 'x')
    SplitProducts(toy, spec, deal(toy, 0)['split_1'], tmp_path).ddpm_folder()
    SplitProducts(toy, replace(spec, config=replace(cfg, generator_options={})), deal(toy, 0)['split_1'], tmp_path/'b').ddpm_folder()
    assert seen == ['cuda', 'cpu']
    from synthkit.precision import resolve_dtype
    assert dtypes == [resolve_dtype('auto', 'ddpm', 'cuda'), resolve_dtype('auto', 'ddpm', 'cpu')]   # resolved, so the key can hold it
    SplitProducts(toy, replace(spec, config=replace(cfg, generator_options=dict(dtype='fp32'))), deal(toy, 0)['split_1'], tmp_path/'c').ddpm_folder()
    assert dtypes[-1] == 'fp32'


def test_a_ddpm_cut_short_by_minutes_is_not_used(toy, tmp_path):
    "A minutes cap that stops training before `steps` is visible, and the grid refuses the model (no done.json)."
    cfg = replace(CFG, generator='ddpm', ddpm=dict(TINY_DDPM, steps=10**6, minutes=1e-4))
    prep = SplitProducts(toy, RunSpec('split_1', 0, '+2', cfg, 'x'), deal(toy, 0)['split_1'], tmp_path)
    with pytest.warns(UserWarning, match='stopped at'), pytest.raises(SynthkitError, match='stopped at .* minutes=0.0001 cap.*minutes=None'):
        prep.ddpm_folder()
    assert not list(tmp_path.rglob('done.json'))


def test_tiled_grid_from_one_pretrained_start_scored_on_whole_images(tmp_path, monkeypatch):
    "Tiles for training, whole native images for the test and the extra pool, one cached start shared by every run and seed."
    import yaml
    from PIL import Image
    from synthkit.data.formats import load_dataset
    import synthkit.pretrain as pt
    made, real_pretrain = [], pt.pretrain
    monkeypatch.setattr(pt, 'pretrain', lambda p, **k: made.append(p.key) or real_pretrain(p, **k))
    data = load_dataset(toy_dataset(tmp_path/'toy128', n=20, size=128, seed=3).parent)
    def deal4(ds, seed, sizes=None):   # 8 / 4 / 4 and 4 images in no part: the extra pool
        ids = sorted(ds.ids); random.Random(seed).shuffle(ids)
        return {'split_1': dict(train=ids[:8], val=ids[8:12], test=ids[12:16])}
    cfg = replace(CFG, conditions=('baseline', 'classic+1'), seeds=(0, 1), tiles=dict(size=64, overlap=0), passes=1, start='pretrained', detect=CFG.detect.replace(steps=4),
                  pretrain=dict(scenes=25, steps=2))
    out = tmp_path/'grid'
    rows = run_grid(data, cfg, out, split_fn=deal4, progress=False)
    assert len(made) == 1 and {r['start'] for r in rows} == {f'pretrained:{made[0]}'}     # one start for 4 runs over 2 seeds
    for r in rows:
        rd = Path(r['run_dir'])
        args = yaml.safe_load((rd/'detector'/'train'/'args.yaml').read_text())
        assert 'start-' in str(args['model']) and args['imgsz'] == 64                     # fine-tuned from the start, on tiles
        assert r['eval_imgsz'] == 128                                                     # whole 128 px test images, not shrunk
        d = yaml.safe_load((rd/'data.yaml').read_text())
        assert {Image.open(f).size for f in Path(d['test']).iterdir()} == {(128, 128)} and len(list(Path(d['test']).iterdir())) == 4
        assert {Image.open(l).size for l in (rd/'train.txt').read_text().split()} == {(64, 64)}
        assert 'extra_map50' in r and len(list(Path(d['extra']).iterdir())) == 4
    assert run_grid(data, cfg, out, split_fn=deal4, progress=False) == rows and len(made) == 1   # all cached, no new start
    rows2 = run_grid(data, replace(cfg, pretrain=dict(scenes=25, steps=3)), out, split_fn=deal4, progress=False)
    assert len(set(made)) == 2 and {r['key'] for r in rows2}.isdisjoint({r['key'] for r in rows})   # another start: new runs


def test_a_start_for_other_classes_is_refused(toy, tmp_path):
    from synthkit.detect import train_detector
    y = toy_dataset(tmp_path/'boats', n=8, size=64, seed=2)
    y.write_text(y.read_text().replace('0: ship', '0: boat'))
    run = train_detector(y, tmp_path/'boat-detector', DetectConfig(imgsz=64, batch=8, steps=1, warmup_steps=0))
    with pytest.raises(SynthkitError, match=r"built for classes \['boat'\], the data has \['ship'\]"):
        run_grid(toy, replace(CFG, start=str(run.weights)), tmp_path/'g', split_fn=deal, progress=False)
    assert not (tmp_path/'g'/'runs').exists()


def test_checked_condition_drops_what_the_baseline_detector_cannot_find(toy, tmp_path):
    "+N:checked keeps only variations in which the baseline detector of the same split and seed finds the boxes, refilling from more outputs."
    cfg = replace(CFG, conditions=('+2:checked', 'baseline'), tiles=dict(size=32, overlap=0), label_check=dict(conf=0.99, recall=1.0),
                  passes=1, detect=CFG.detect.replace(steps=6))
    rows = run_grid(toy, cfg, tmp_path, split_fn=deal, generator_factory=Copier(), progress=False)
    assert [r['condition'] for r in rows] == ['baseline', '+2:checked']                 # the baseline runs first
    r = rows[1]
    # a 2-step detector finds nothing at conf 0.99: every variation with a box is dropped (empty tiles pass: nothing to find),
    # so the grid generated and checked more variations than the synthetic entries the run needs, as far as the sources go
    from synthkit.conditions import mix_counts
    n_syn = mix_counts(48, r['n_train_real_distinct'], 2)[1]
    assert r['label_check_checked'] > n_syn and 0 < r['label_check_kept'] < r['label_check_checked']
    verdicts, = [json.loads(f.read_text()) for f in (tmp_path/'synth').rglob('labelcheck-*.json')]   # cached per detector and settings
    for p, (keep, why) in verdicts.items():
        has_boxes = bool(Path(p.replace('/images/', '/labels/')).with_suffix('.txt').read_text().strip())
        assert keep != has_boxes, (p, why)
    kept = {p for p, (keep, _) in verdicts.items() if keep}
    synth = [l for l in (Path(r['run_dir'])/'train.txt').read_text().split() if '/synth/' in l]
    assert len(synth) == r['n_train_synth'] == n_syn and set(synth) <= kept          # the run's share of 48 entries, drawn from the kept ones
    assert 'label_check' in json.loads((Path(r['run_dir'])/'spec.json').read_text())
    with pytest.raises(SynthkitError, match="a :checked condition uses the baseline"):
        replace(cfg, conditions=('+2:checked',)).check()


def test_a_new_metric_is_one_declaration(grid, toy, tmp_path, monkeypatch):
    "One Metric(...) in synthkit.detect.METRICS: cached runs get it from their saved weights (no retraining); table, summary, panel and CLI show it."
    import shutil
    import synthkit.detect as det
    from synthkit.report import write_report
    from synthkit.casestudy import result_line
    from synthkit.casestudy_panel import rows_html
    out = tmp_path/'grid'; shutil.copytree(grid[0], out)
    monkeypatch.setattr(runner, 'train_detector', lambda *a, **k: pytest.fail('a cached run was retrained for a new metric'))
    fitness = det.Metric('fitness', 'fitness', 'fitness')
    det.METRICS.append(fitness)
    try:
        rows = run_grid(toy, CFG, out, split_fn=deal, generator_factory=Copier(), progress=False)
        assert all(0 <= r['fitness'] <= 1 for r in rows)
        assert all('fitness' in json.loads(f.read_text()) for f in out.glob('runs/*/result.json'))    # stored: computed once
        assert 'fitness_mean' in summarize(rows)[0]
        text = write_report(rows, out, config=CFG).read_text()
        assert '| mAP50 | mAP50-95 | fitness |' in text
        assert f"fitness {rows[0]['fitness']:.3f}" in result_line(rows[0]) and '<th style="padding:2px 8px">fitness</th>' in rows_html(rows)
        assert 'fitness' in row_fields()
    finally:
        det.METRICS.remove(fitness)


def test_identical_training_lists_are_trained_once(toy, tmp_path, monkeypatch):
    "+1 and +2 at a share that only reaches output 0 of each source draw the same list: the second row is the first's result."
    trained, real = [], runner.train_detector
    monkeypatch.setattr(runner, 'train_detector', lambda y, d, c, **k: trained.append(Path(d).parent.name) or real(y, d, c, **k))
    rows = run_grid(toy, replace(CFG, conditions=('classic+1', 'classic+2'), synth_share=0.25), tmp_path, split_fn=deal, progress=False)
    a, b = rows
    assert (Path(a['run_dir'])/'train.txt').read_text() == (Path(tmp_path/'runs').glob('*classic+2*').__next__()/'train.txt').read_text()
    assert len(trained) == 1 and b['same_as'] == 'classic+1' and b['map50'] == a['map50'] and b['train_seconds'] == 0
    assert b['n_train_synth_distinct'] == a['n_train_synth_distinct'] == 4


def test_ddpm_start_made_once_and_every_split_fine_tuned_from_it(toy, tmp_path):
    "ddpm_start > 0: one DDPM start per grid (simulated scenes + never-test images, no test image), each (split, seed) DDPM starts from it."
    from synthkit.ddpm import read_meta
    cfg = replace(CFG, conditions=('baseline', '+1'), seeds=(0, 1), generator='ddpm', gen_steps=4, ddpm_start=2,
                  ddpm=dict(TINY_DDPM, steps=2, minutes=None), pretrain=dict(scenes=25))
    rows = run_grid(toy, cfg, tmp_path, split_fn=deal, progress=False)
    starts = list((tmp_path/'ddpm-start').glob('start-*/done.json'))
    assert len(starts) == 1 and len(rows) == 4
    start = starts[0].parent
    tests = set(deal(toy, 0)['split_1']['test']) | set(deal(toy, 1)['split_1']['test'])
    assert json.loads(starts[0].read_text())['never_test'] == len(set(toy.ids) - tests)   # never a test image of any seed
    made = [read_meta(d) for d in (tmp_path/'ddpm').iterdir() if d.is_dir()]
    assert len(made) == 2 and all(m['start']['folder'] == str(start/'model') for m in made)
    from synthkit.sdedit import t_max_for
    assert all(m['config']['t_max'] == t_max_for(0.3, 4) < 1000 for m in made)   # trained only where the grid's strength samples
    with pytest.raises(SynthkitError, match='ddpm_start=-1'): replace(cfg, ddpm_start=-1).check()


def test_cells_run_part_of_a_grid_with_the_whole_grids_starts(toy, tmp_path, monkeypatch):
    "cells=[(split, seed)]: only those runs, identical to the whole grid's (same keys), and the grid's tables untouched."
    cfg = replace(CFG, conditions=('baseline', 'classic+1'), seeds=(0, 1))
    rows = run_grid(toy, cfg, tmp_path, split_fn=deal, progress=False, cells=[('split_1', 1)])
    assert {(r['split'], r['seed']) for r in rows} == {('split_1', 1)} and len(rows) == 2
    assert not (tmp_path/'grid.json').exists() and not (tmp_path/'results.csv').exists()
    trained, real = [], runner.train_detector
    monkeypatch.setattr(runner, 'train_detector', lambda y, d, c, **k: trained.append(Path(d).parent.name) or real(y, d, c, **k))
    whole = run_grid(toy, cfg, tmp_path, split_fn=deal, progress=False)
    assert len(whole) == 4 and len(trained) == 2 and all('-s0' in t for t in trained)   # seed 1 came from the cache
    assert (tmp_path/'results.csv').is_file()
    with pytest.raises(SynthkitError, match=r"cells \[\('split_1', 7\)\] are not in the grid"):
        run_grid(toy, cfg, tmp_path, split_fn=deal, progress=False, cells=[('split_1', 7)])


def test_paste_and_harmonized_conditions_add_new_ships_with_exact_boxes(toy, tmp_path):
    "paste+N / harmonized+N: every real tile kept, ships from the split's own training images only, harmonized = paste's layout."
    from synthkit.synthesize import Manifest
    from synthkit.stats import comparisons
    cfg = replace(CFG, conditions=('baseline', 'paste+1', 'harmonized+1'), generator='ddpm', gen_steps=4,
                  ddpm=dict(TINY_DDPM, steps=2, minutes=None), paste=dict(k=2, margin=2))
    rows = run_grid(toy, cfg, tmp_path, split_fn=deal, progress=False)
    by = {r['condition']: r for r in rows}
    assert by['paste+1']['n_train_real_distinct'] == by['harmonized+1']['n_train_real_distinct'] == by['baseline']['n_train_real_distinct']
    train = set(deal(toy, 0)['split_1']['train'])
    banks = list((tmp_path/'synth').glob('*/bank-*'))
    assert len(banks) == 1
    from synthkit.paste import CropBank
    assert {source_image(s) for s in CropBank.load(banks[0]).sources} <= train   # never a val or test image
    recs = {kind: {(r['source'], r['k']): r for r in Manifest(Path(by[kind]['synth_dir'])/'manifest.jsonl').read()} for kind in ('paste+1', 'harmonized+1')}
    assert recs['paste+1'].keys() == recs['harmonized+1'].keys()
    from synthkit.data.formats import load_dataset
    real, = [load_dataset(y, check_pixels=False) for y in (tmp_path/'data').glob('*/data.yaml')]
    for sk, r in recs['paste+1'].items():
        h = recs['harmonized+1'][sk]
        assert r['boxes'] == h['boxes'] and r['paste']['placed'] == h['paste']['placed']   # the same layout, paired
        own = real[sk[0]].boxes                                                           # the source's boxes, then the pasted ships'
        assert len(r['boxes']) == len(own) + r['paste']['placed'] and np.allclose(np.asarray(r['boxes'])[:len(own)], own), sk
    assert sum(r['paste']['placed'] for r in recs['paste+1'].values()) > 0
    vs = {(c['condition'], c['versus']) for c in comparisons(rows)}
    assert {('paste+1', 'baseline'), ('harmonized+1', 'baseline'), ('harmonized+1', 'paste+1')} <= vs
    with pytest.raises(SynthkitError, match='harmonized conditions'): replace(cfg, generator='stub').check()
    with pytest.raises(SynthkitError, match="paste=\\{'kk': 1\\}"): replace(cfg, paste={'kk': 1}).check()


def test_drawn_condition_draws_at_pastes_places_checked_by_the_baseline_detector(toy, tmp_path):
    "drawn+N: paste+N's places and counts for the same split and seed, a layout DDPM of its own, ships checked by the baseline detector."
    from synthkit.synthesize import Manifest
    from synthkit.stats import comparisons
    from synthkit.ddpm import read_meta
    cfg = replace(CFG, conditions=('baseline', 'paste+1', 'drawn+1'), paste=dict(k=2, margin=2),
                  layout_ddpm=dict(TINY_DDPM, steps=2, minutes=None), drawn=dict(window=32, verify_conf=0.0))
    rows = run_grid(toy, cfg, tmp_path, split_fn=deal, progress=False)
    by = {r['condition']: r for r in rows}
    assert by['drawn+1']['n_train_real_distinct'] == by['baseline']['n_train_real_distinct']
    layout, = list((tmp_path/'layout').glob('split_1-s0-*'))
    assert read_meta(layout)['model']['layout'] is True
    recs = {kind: {(r['source'], r['k']): r for r in Manifest(Path(by[kind]['synth_dir'])/'manifest.jsonl').read()} for kind in ('paste+1', 'drawn+1')}
    assert recs['paste+1'].keys() == recs['drawn+1'].keys()
    for sk, r in recs['paste+1'].items():
        d = recs['drawn+1'][sk]['drawn']
        assert d['placed'] == r['paste']['placed'] and d['paste_windows'] == r['paste']['windows']   # the same places, paired
        assert d['checked'] and len(d['verified']) == d['placed'] and d['kept'] == sum(d['verified'])
        assert len(recs['drawn+1'][sk]['boxes']) == len(r['boxes']) - r['paste']['placed'] + d['kept']
    assert sum(r['drawn']['placed'] for r in recs['drawn+1'].values()) > 0
    vs = {(c['condition'], c['versus']) for c in comparisons(rows)}
    assert {('drawn+1', 'baseline'), ('drawn+1', 'paste+1')} <= vs
    with pytest.raises(SynthkitError, match='checked by the baseline detector'): replace(cfg, conditions=('paste+1', 'drawn+1')).check()


def test_the_crop_bank_of_a_split_holds_no_tile_of_a_val_or_test_image(toy, tmp_path, monkeypatch):
    "The grid checks the bank it cut against the split's val images as well as its test images, tile by tile."
    from synthkit.data.formats import load_dataset
    from synthkit.data.items import Dataset
    from synthkit.paste import CropBank
    cfg = replace(CFG, conditions=('baseline', 'paste+1'), tiles=dict(size=32, overlap=0), paste=dict(margin=2))
    prep = SplitProducts(toy, RunSpec('split_1', 0, 'paste+1', cfg, 'x'), deal(toy, 0)['split_1'], tmp_path)
    real = load_dataset(prep.real()/'data.yaml', check_pixels=False)
    leaky = Dataset([replace(it, meta={**it.meta, 'split': 'train'}) for it in real if it.meta['split'] in ('train', 'val')], real.names)
    cut = CropBank.from_dataset
    monkeypatch.setattr(CropBank, 'from_dataset', lambda *a, **k: cut(leaky, margin=2))   # a cut that let val tiles through
    with pytest.raises(SynthkitError, match=r"the crop bank holds ships of val image '\w+@x\d+y\d+'"): prep.bank()
    assert not list((tmp_path/'synth').rglob('bank.json'))


def test_no_start_learns_from_an_extra_pool(toy):
    "The extra pool (images in no part of a split) is the report's independent test set: no start learns from it either."
    from synthkit.grid.starts import never_test
    def deal_extra(ds, seed, sizes=None):   # 6 / 3 / 3 and the last 4 of each shuffle in no part
        ids = sorted(ds.ids); random.Random(seed).shuffle(ids)
        return {'split_1': dict(train=ids[:6], val=ids[6:9], test=ids[9:12])}
    never = set(never_test(toy, replace(CFG, seeds=(0, 1)), deal_extra).ids)
    held = set()
    for s in (0, 1):
        ids = sorted(toy.ids); random.Random(s).shuffle(ids); held |= set(ids[9:])
    assert never and not never & held and never == set(toy.ids) - held
