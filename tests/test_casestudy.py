"""synthkit case-study: the CLI, its overrides and error messages, a tiny end-to-end run and its cached rerun."""
import json, subprocess, sys, time
from pathlib import Path

import pytest

from synthkit.errors import SynthkitError
from synthkit.casestudy import PRESETS, resolve, parse_sets, shrink

EXE = str(Path(sys.executable).parent/'synthkit')
TINY = ['--set', 'sim_n=16', '--set', 'sim_size=64', '--set', "splits=('split_1',)", '--set', "split_sizes={'split_1': (8, 4, 4)}",
        '--set', "conditions=('baseline', '+1', 'classic+1')", '--set', 'steps=4', '--set', 'warmup_steps=0', '--set', 'imgsz=64',
        '--set', "ddpm={'steps': 2, 'crop': 32}", '--set', 'gen_steps=4', '--quiet']


def cli(*args, timeout=600):
    return subprocess.run([EXE, 'case-study', *args], capture_output=True, text=True, timeout=timeout)


def test_presets_are_the_protocol():
    # standard: pasted ships and the DDPM's variations against the copies; ships drawn at paste's places (the layout
    # DDPM), +10 and its control are one override away
    want = {'standard': {'baseline', 'classic+2', 'paste+2', '+2'}}
    for name, g in PRESETS.items():
        full = want.get(name, {'baseline', '+2', 'classic+2', '+10', 'classic+10'})
        assert g.splits == ('split_1', 'split_2') and set(g.conditions) == full, name
    assert set(resolve('standard', conditions=('baseline', '+2', '+10', 'classic+2', 'classic+10'))[0].conditions) >= {'+10', 'classic+10'}
    g = resolve('standard', conditions=('baseline', 'classic+2', 'paste+2', 'drawn+2'))[0]
    assert 'drawn+2' in g.conditions and g.layout_start > 0   # the layout start and its settings stay in the preset
    assert PRESETS['standard'].layout_ddpm['layout_masks'] == 'footprint'   # real ships' masks: their bright pixels
    assert PRESETS['standard'].drawn == dict(strength=1.0, steps=10, guidance=2.0)   # the sweep's choice (nbs/26)
    assert len(PRESETS['standard'].seeds) >= 5 and len(PRESETS['paper'].seeds) == 3
    assert PRESETS['quick'].budget == PRESETS['standard'].budget == 'steps'
    s = PRESETS['standard']   # native scale, a pretrained start, the whole test images
    assert s.tiles is not None and s.start == 'pretrained' and s.extra_test
    from synthkit.casestudy import DATA_PRESETS
    assert DATA_PRESETS['standard']['max_side'] is None


def test_every_value_can_be_overridden():
    g, d = resolve('standard', seeds=[4], imgsz=160, model='yolo11n.yaml', strength=0.2, budget='epochs', max_side=256, ddpm={'steps': 7})
    assert (g.seeds, g.detect.imgsz, g.detect.model, g.strength, g.budget, d['max_side']) == ((4,), 160, 'yolo11n.yaml', 0.2, 'epochs', 256)
    assert g.ddpm['steps'] == 7 and g.ddpm['channels'] == PRESETS['standard'].ddpm['channels']
    g, _ = resolve('standard', steps=99, **{'detect.warmup_steps': 9, 'pretrain.steps': 5})   # each "steps" in its own section
    assert (g.detect.steps, g.detect.warmup_steps, g.pretrain['steps'], g.ddpm['steps']) == (99, 9, 5, PRESETS['standard'].ddpm['steps'])
    assert not any(hasattr(g, k) for k in ('steps', 'epochs', 'warmup_steps'))             # the detector's length lives in detect only
    g, _ = resolve('standard', **{'generator_options.dtype': 'fp32', 'label_check.recall': 0.5})   # generator options, one by one
    assert g.generator_options == {'dtype': 'fp32'} and g.label_check == {'recall': 0.5}
    assert parse_sets(['x=1', 'y=a b', 'z=[1, 2]']) == {'x': 1, 'y': 'a b', 'z': [1, 2]}


@pytest.mark.parametrize('args, msg', [
    (['--set', 'imgsize=3'], "unknown setting 'imgsize'"),
    (['--set', 'imgsz'], "--set 'imgsz' is not KEY=VALUE"),
    (['--seeds', 'a,b'], "--seeds 'a,b' is not a comma-separated list"),
    (['--data', '/nonexistent/ssdd'], '/nonexistent/ssdd: data folder not found'),
    (['--set', 'imgsz=100'], 'imgsz=100 must be a multiple of 32'),
    (['--set', "conditions=('baseline', 'extra+2')"], "condition 'extra+2'"),
])
def test_cli_errors_are_one_line(tmp_path, args, msg):
    r = cli('--out', str(tmp_path), *args, timeout=120)
    assert r.returncode == 2, r.stderr
    err = [l for l in r.stderr.splitlines() if l.startswith('synthkit case-study: error:')]
    assert len(err) == 1 and msg in err[0], r.stderr


def test_tiny_case_study_end_to_end_then_cached(tmp_path):
    r = cli('--out', str(tmp_path), *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'report:' in r.stdout and (tmp_path/'report.md').is_file()
    rows = json.loads((tmp_path/'results.json').read_text())
    assert [x['condition'] for x in rows] == ['baseline', '+1', 'classic+1']
    for f in ('map_by_condition', 'map_vs_variations', 'samples', 'training_curves'):
        assert (tmp_path/'figures'/f'{f}.png').is_file()
    quality = json.loads((tmp_path/'quality.json').read_text())   # image quality of what the runs trained on
    assert {q['generator'] for q in quality} == {'ddpm', 'classic'} and all(0 < q['ssim'] <= 1 for q in quality)
    assert '## Image quality of the variations' in (tmp_path/'report.md').read_text()
    before = {p: p.stat().st_mtime for p in tmp_path.glob('runs/*/result.json')}
    r2 = cli('--out', str(tmp_path), *TINY)
    assert r2.returncode == 0
    assert {p: p.stat().st_mtime for p in tmp_path.glob('runs/*/result.json')} == before   # nothing retrained
    assert json.loads((tmp_path/'results.json').read_text()) == rows


def test_shrink_scales_images_and_boxes(tmp_path):
    from synthkit.testing import toy_dataset
    from synthkit.data.formats import load_dataset
    ds = load_dataset(toy_dataset(tmp_path/'toy', n=4, size=64, parts=(('train', 1.0),)).parent)
    small = shrink(ds, 32, tmp_path/'small')
    for a in ds:
        b = small[a.id]
        assert (b.width, b.height) == (32, 32) and b.boxes == pytest.approx(a.boxes / 2, abs=0.01) and (b.cls == a.cls).all()
        assert b.read().shape[:2] == (32, 32)


def test_real_data_is_shrunk(ssdd_dev, tmp_path):
    from synthkit.casestudy import prepare_data
    ds = prepare_data(ssdd_dev, tmp_path, dict(max_side=96))
    assert len(ds) >= 200 and max(max(it.width, it.height) for it in ds) <= 96 and ds.n_boxes > 0


def _toy_data(tmp_path, n):
    from synthkit.testing import toy_dataset
    return toy_dataset(tmp_path/'toy', n=n, size=64, parts=(('train', 1.0),)).parent


def test_data_too_small_for_the_splits_names_counts_and_the_fix(tmp_path):
    out = tmp_path/'out'
    r = cli('--data', str(_toy_data(tmp_path, 10)), '--out', str(out), '--set', "split_sizes={'split_1': (8, 4, 4)}", '--quiet', timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    err = [l for l in r.stderr.splitlines() if l.startswith('synthkit case-study: error:')]
    assert len(err) == 1 and 'has 10 images but the splits need 16' in err[0] and "--set \"split_sizes={'split_1': (5, 2, 2)}\"" in err[0], err
    assert 'Traceback' not in r.stderr and not (out/'runs').exists() and not (out/'grid.json').exists()


def test_tile_larger_than_every_image_is_one_line(tmp_path):
    out = tmp_path/'out'
    r = cli('--data', str(_toy_data(tmp_path, 20)), '--out', str(out), '--set', "split_sizes={'split_1': (8, 4, 4)}",
            '--set', "splits=('split_1',)", '--set', "tiles={'size': 512}", '--quiet', timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    err = [l for l in r.stderr.splitlines() if l.startswith('synthkit case-study: error:')]
    assert len(err) == 1 and 'tile size 512 px is larger than every image (the largest side is 64 px)' in err[0] and 'tiles.size=' in err[0], err
    assert not (out/'runs').exists() and not (out/'grid.json').exists()


def test_grid_scorecard_trains_tstr_from_the_runs_start_under_either_budget(tmp_path, monkeypatch):
    "The scorecard's TSTR detector starts where the grid's runs start (their args.yaml's model), under budget='epochs' too."
    import yaml
    import synthkit.scorecard as sc
    from synthkit.casestudy import grid_scorecard, resolve
    from synthkit.files import mark_done
    real = tmp_path/'data'/'split_1-s0'
    (real/'images'/'test').mkdir(parents=True); (real/'images'/'val').mkdir(parents=True)
    run = tmp_path/'runs'/'base'
    (run/'detector'/'train').mkdir(parents=True)
    (run/'detector'/'train'/'args.yaml').write_text(yaml.safe_dump(dict(model='/starts/pretrained.pt')))
    (run/'data.yaml').write_text(yaml.safe_dump(dict(test=str(real/'images'/'test'))))
    synth = tmp_path/'synth'/'classic'; synth.mkdir(parents=True); mark_done(synth)
    rows = [dict(split='split_1', seed=0, condition='baseline', kind='baseline', run_dir=str(run), map50=0.5, eval_imgsz=64),
            dict(split='split_1', seed=0, condition='classic+2', kind='classic', n_per_image=2, run_dir=str(run), synth_dir=str(synth), map50=0.5)]
    seen = []
    monkeypatch.setattr(sc, 'scorecard', lambda *a, config=None, **k: seen.append(config) or [])
    monkeypatch.setattr('synthkit.detect.split_images', lambda *a, **k: [])
    for budget, epochs in (('steps', None), ('epochs', 5)):
        config, _ = resolve('quick', budget=budget, **({'epochs': epochs} if epochs else {}))
        grid_scorecard(rows, tmp_path/budget, config)
        assert seen[-1].model == '/starts/pretrained.pt', (budget, seen[-1].model)
