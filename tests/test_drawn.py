"""drawn: the layout channel reaches the UNet; paste's places; the source kept outside the windows; the real-data check;
guidance 0 is the unconditional path; kill, resume and regenerate byte for byte; bad input in one line."""
import json, os, signal, subprocess, sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from synthkit.errors import SynthkitError
from synthkit.generators import GenParams, derive_seed, load_generator
from synthkit.ddpm import DDPMConfig
from synthkit.ddpm_train import train_ddpm
from synthkit.layout import layout_mask, hull_box
from synthkit.paste import CropBank, PasteGenerator
from synthkit.drawn import DrawnShipsGenerator
from synthkit.synthesize import Manifest, regenerate
from test_paste import make_toy, KILLER, _data, _files, toy, bank_dir   # paste's toy and its crop bank: the same places

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1'}
TINY = dict(crop=32, channels=(16, 32), layers_per_block=1, norm_groups=8, batch=4, minutes=None)
P = GenParams(strength=0.8, steps=10, guidance=2.0, seed=3)


@pytest.fixture(scope='module')
def model(toy, tmp_path_factory):
    import torch
    torch.set_num_threads(1)
    return train_ddpm(toy, tmp_path_factory.mktemp('m')/'layout', DDPMConfig(**TINY, steps=4, layout=True), progress=False, dtype='fp32')


def test_the_layout_channel_reaches_the_unet(tmp_path):
    "A toy where the mask decides the pixel (bright inside, dark outside): sampled from noise, the model follows the mask it is given."
    import torch
    from synthkit.data.items import Item, Dataset
    from synthkit.images import save_image
    from synthkit.sdedit import DDPMGenerator
    torch.set_num_threads(1)
    rng, items = np.random.default_rng(0), []
    for i in range(24):
        boxes = []
        for _ in range(int(rng.integers(1, 4))):
            w, h = rng.integers(6, 20, 2); x, y = rng.integers(0, 48 - w), rng.integers(0, 48 - h)
            boxes.append([x, y, x + w, y + h])
        a = np.clip(0.15 + 0.7 * layout_mask((48, 48), boxes) + 0.05 * rng.standard_normal((48, 48)), 0, 1)
        items.append(Item(save_image((a * 255).astype(np.uint8), tmp_path/'d'/f'{i}.png'), 48, 48, np.array(boxes, np.float32), np.zeros(len(boxes), np.int64), f't{i}'))
    d = train_ddpm(Dataset(items, ['ship']), tmp_path/'m', DDPMConfig(**{**TINY, 'batch': 8}, steps=250, lr=2e-3, warmup=20, layout=True, object_weight=0.5),
                   progress=False, dtype='fp32')
    g = DDPMGenerator(d, dtype='fp32')
    lay = layout_mask((32, 32), [[4, 10, 28, 18]])
    def contrast(guidance):
        ys = g.sdedit_many([np.full((32, 32), 0.15, np.float32)], 1.0, 20, [[1, 2, 3, 4]], layouts=[lay], guidance=guidance)
        return np.mean([y[lay == 1].mean() - y[lay == 0].mean() for y in ys])
    followed, ignored = contrast(1.0), contrast(0.0)
    assert followed > 0.3 and followed > ignored + 0.2, (followed, ignored)


def test_new_ships_sit_at_pastes_places_with_the_hulls_boxes(toy, bank_dir, model):
    g, pg = DrawnShipsGenerator(model, bank_dir, k=3, window=32, empty='copy'), PasteGenerator(bank_dir, k=3)
    for it in toy:
        for o, q in zip(g.generate_labelled(it.read(), it.boxes, it.cls, n=2, params=P, source_id=it.id),
                        pg.generate_labelled(it.read(), it.boxes, it.cls, n=2, params=P, source_id=it.id)):
            d, pq = o.info['drawn'], q.info['paste']
            assert d['placed'] == pq['placed'] and d['paste_windows'] == pq['windows']
            qb = q[1][pq['pasted']]
            if len(qb): assert np.abs(np.array(d['hulls'])[:, :2] - np.stack([(qb[:, 0] + qb[:, 2]) / 2, (qb[:, 1] + qb[:, 3]) / 2], 1)).max() < 1e-3
            nb = o[1][d['new']]
            assert np.allclose(nb, [np.clip(hull_box(h), 0, [128, 96, 128, 96]) for h in d['hulls']]) and (nb[:, 2] > nb[:, 0]).all()
            for i in range(len(o[1])):   # no new ship touches another box
                for j in range(i + 1, len(o[1])):
                    if i in d['new'] or j in d['new']:
                        a, b = o[1][i], o[1][j]
                        assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)


def test_outside_the_windows_the_source_is_kept_exactly(toy, bank_dir, model):
    g = DrawnShipsGenerator(model, bank_dir, k=3, window=32)
    it = toy[0]; src = it.read()
    for o in g.generate_labelled(src, it.boxes, it.cls, n=3, params=P, source_id=it.id):
        inside = np.zeros(src.shape, bool)
        for x0, y0, x1, y1 in o.info['drawn']['windows']: inside[y0:y1, x0:x1] = True
        assert inside.any() and np.array_equal(o[0][~inside], src[~inside]) and (o[0][inside] != src[inside]).mean() > 0.02


def test_a_ship_the_detector_misses_loses_its_box_and_its_pixels(toy, bank_dir, model):
    class Finds:
        "Finds exactly the boxes it is given."
        def __init__(self, boxes): self.b = np.asarray(boxes, np.float32).reshape(-1, 4)
        def predict(self, image, conf=0.0): return self.b, np.ones(len(self.b), np.float32), np.zeros(len(self.b), np.int64)
    it = toy[0]; src = it.read()
    free = DrawnShipsGenerator(model, bank_dir, k=3, window=32).generate_labelled(src, it.boxes, it.cls, params=P, source_id=it.id)[0]
    d = free.info['drawn']; assert d['placed'] >= 2
    keep = free[1][d['new'][0]]
    o = DrawnShipsGenerator(model, bank_dir, k=3, window=32, detector=Finds([keep])).generate_labelled(src, it.boxes, it.cls, params=P, source_id=it.id)[0]
    od = o.info['drawn']
    assert od['verified'] == [True] + [False] * (d['placed'] - 1) and od['kept'] == 1 and od['dropped'] == d['placed'] - 1
    assert len(o[1]) == it.n_boxes + 1 and np.array_equal(o[1][-1], keep)
    for (x0, y0, x1, y1), v in zip(od['windows'], od['verified']):
        if not v:   # the missed ship's window: the source again, except where the kept ship's region reaches into it
            w0 = free.info['drawn']['windows'][0]
            m = np.ones(src.shape, bool); m[w0[1]:w0[3], w0[0]:w0[2]] = False
            assert np.array_equal(o[0][y0:y1, x0:x1][m[y0:y1, x0:x1]], src[y0:y1, x0:x1][m[y0:y1, x0:x1]])


def test_guidance_zero_is_the_unconditional_path(toy, bank_dir, model):
    "With guidance 0 the layout is ignored: the windows are masked SDEdit of the model without a layout, the same computation."
    g = DrawnShipsGenerator(model, bank_dir, k=3, window=32, dtype='fp32')
    it = toy[1]; src = it.read()
    p0 = P.replace(guidance=0.0)
    from synthkit.drawn import draw_layout
    seeds = [derive_seed(p0.seed, it.id, 0)]
    lays = [draw_layout(src, it.boxes, it.cls, g.bank, s, g.prior, g.paste_options()) for s in seeds]
    x, _ = g.ddpm._unit(src)
    jobs = g._jobs(src, it.boxes, lays, seeds)
    same = [j for j in jobs if j['side'] == jobs[0]['side']]
    drawn = g._draw(x, same, p0)
    plain = g.ddpm.sdedit_many([x[j['win']] for j in same], p0.strength, p0.steps, [[j['seed']] for j in same], masks=[j['region'] for j in same])
    assert all(np.array_equal(a, b) for a, b in zip(drawn, plain))
    assert not np.array_equal(g._draw(x, same, P)[0], drawn[0])   # guidance 2: the layout moves the pixels


def _cmd(data, model, bank, out, *extra):
    return [str(BIN/'synthkit'), 'generate', str(data), '--generator', f'drawn:{model}', '--option', f'bank={bank}', '--option', 'k=2',
            '--option', 'window=32', '--option', 'looks=8', '--option', 'empty=copy', '--n', '2', '--strength', '0.8', '--steps', '10',
            '--guidance', '2', '--seed', '3', '--out', str(out), '--quiet', *extra]


def test_kill_resume_and_regenerate_are_byte_exact(toy, bank_dir, model, tmp_path):
    data = _data(toy, tmp_path)
    ref = tmp_path/'ref'
    r = subprocess.run(_cmd(data, model, bank_dir, ref), capture_output=True, text=True, env=ENV)
    assert r.returncode == 0 and '12 written' in r.stdout, r.stderr + r.stdout   # every part: each part's own variations
    out = tmp_path/'killed'
    p = subprocess.run([sys.executable, '-c', KILLER, '5', 'mid'] + _cmd(data, model, bank_dir, out)[1:], capture_output=True, text=True, env=ENV)
    assert p.returncode == -signal.SIGKILL, p.stderr
    r = subprocess.run(_cmd(data, model, bank_dir, out), capture_output=True, text=True, env=ENV)
    assert r.returncode == 0 and '8 written' in r.stdout and '4 already there' in r.stdout, r.stderr + r.stdout
    assert _files(out) == _files(ref)
    recs = Manifest(ref).read()
    assert all('drawn' in rec and rec['drawn']['placed'] == len(rec['drawn']['hulls']) for rec in recs)
    from synthkit.data.formats import load_dataset
    from synthkit.images import read_image
    g = load_generator(f'drawn:{model}', bank=str(bank_dir), k=2, window=32, looks=8, empty='copy')
    ds = load_dataset(data)
    for rec in recs[:3]:
        img, boxes, _ = regenerate(rec, g, ds, labels=True)
        assert np.array_equal(img, read_image(ref/rec['path'])) and np.allclose(boxes, rec['boxes'])


@pytest.mark.parametrize('extra, said', [(['--guidance', '-1'], 'guidance=-1'), (['--guidance', 'x'], "argument --guidance: invalid float value: 'x'"),
                                          (['--option', 'k=0'], 'k=0 must be an integer ≥ 1'), (['--option', 'window=16'], 'window=16 must be a multiple')])
def test_bad_input_is_one_line_and_writes_nothing(toy, bank_dir, model, tmp_path, extra, said):
    data = _data(toy, tmp_path)
    cmd = _cmd(data, model, bank_dir, tmp_path/'out')
    i = cmd.index('--quiet'); cmd = cmd[:i] + extra + cmd[i:]
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    lines = r.stderr.strip().splitlines()   # argparse's own type errors come after its usage lines
    assert r.returncode == 2 and said in lines[-1] and (len(lines) == 1 or lines[0].startswith('usage:')), r.stderr
    assert not (tmp_path/'out').exists() or not any((tmp_path/'out').rglob('*.png'))


def test_a_model_without_a_layout_channel_or_its_layout_settings_is_refused(toy, bank_dir, model, tmp_path):
    import shutil
    plain = train_ddpm(toy, tmp_path/'plain', DDPMConfig(**TINY, steps=1), progress=False)
    with pytest.raises(SynthkitError, match='has no layout channel.*layout=True'): DrawnShipsGenerator(plain, bank_dir, window=32)
    lost = tmp_path/'lost'; shutil.copytree(model, lost)
    meta = json.loads((lost/'synthkit_ddpm.json').read_text())
    for k in ('layout', 'cond_dropout'): meta['model'].pop(k); meta['config'].pop(k)
    (lost/'synthkit_ddpm.json').write_text(json.dumps(meta))
    with pytest.raises(SynthkitError, match='takes 2 input channels.*lost its layout settings') as e: DrawnShipsGenerator(lost, bank_dir, window=32)
    assert '\n' not in str(e.value)
    # a timestep range it was not trained on: strength 1 starts at t = 999, this model knows t < 300 only
    short = train_ddpm(toy, tmp_path/'short', DDPMConfig(**TINY, steps=1, layout=True, t_max=300), progress=False)
    it = toy[0]
    with pytest.raises(SynthkitError, match='t < 300') as e:
        DrawnShipsGenerator(short, bank_dir, window=32, empty='copy').generate(it.read(), it.boxes, it.cls, params=P.replace(strength=1.0), source_id=it.id)
    assert '\n' not in str(e.value)


def test_a_model_or_bank_that_learned_from_val_or_test_images_is_refused(toy, bank_dir, model, tmp_path):
    "The lineage guard of `generate`: the layout DDPM records the images it learned from; val/test ones are refused."
    from synthkit.data.items import Dataset
    from synthkit.ddpm import read_meta
    data = _data(toy, tmp_path)
    train = sorted(i for i in toy.ids if toy[i].meta['split'] == 'train')
    assert read_meta(model)['sources'] == train                      # the training part only
    everything = Dataset([replace(it, meta={**it.meta, 'split': 'train'}) for it in toy], toy.names)
    seen = train_ddpm(everything, tmp_path/'seen', DDPMConfig(**TINY, steps=1, layout=True), progress=False, dtype='fp32')
    all_bank = CropBank.from_dataset(everything, everything.ids, margin=4).save(tmp_path/'all-bank')
    for m, b, said in [(seen, bank_dir, 'the DDPM in'), (model, all_bank, 'the crop bank holds ships of val/test image')]:
        r = subprocess.run(_cmd(data, m, b, tmp_path/'out'), capture_output=True, text=True, env=ENV)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and 'lineage guard' in lines[0] and said in lines[0], r.stderr
        assert not (tmp_path/'out').exists()


def test_no_room_for_any_ship_is_one_line(toy, bank_dir, model):
    it = toy[0]
    g = DrawnShipsGenerator(model, bank_dir, k=2, window=32)
    with pytest.raises(SynthkitError, match=r"no room for a new ship in 'full': 0 of 2 placed") as e:
        g.generate(it.read(), [[0, 0, 128, 96]], [0], params=P, source_id='full')
    assert '\n' not in str(e.value)


def test_cli_trains_a_layout_model_on_simulated_hulls(tmp_path):
    "`synthkit simulate` writes each ship's hull; `synthkit train-ddpm --layout` trains the drawn generator's model on them."
    from synthkit.ddpm import read_meta
    from synthkit.ddpm_train import with_hulls
    from synthkit.data.formats import load_dataset
    from synthkit.sarsim import SceneParams
    r = subprocess.run([str(BIN/'synthkit'), 'simulate', '--out', str(tmp_path/'sim'), '--n', '3', '--seed', '0', '--workers', '1', '--quiet',
                        '--set', 'width=[96, 128]', '--set', 'height=[64, 96]'], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    ds = with_hulls(load_dataset(tmp_path/'sim'), tmp_path/'sim')
    assert all(len(it.meta['hulls']) == it.n_boxes for it in ds)
    r = subprocess.run([str(BIN/'synthkit'), 'train-ddpm', str(tmp_path/'sim'), '--out', str(tmp_path/'m'), '--crop', '32', '--batch', '2',
                        '--steps', '1', '--layout', '--quiet'], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    assert read_meta(tmp_path/'m')['model']['layout'] is True
    assert read_meta(tmp_path/'m')['model']['layout_masks'] == 'ellipse'
    # real ships' masks from their bright pixels, chosen on the command line
    r = subprocess.run([str(BIN/'synthkit'), 'train-ddpm', str(tmp_path/'sim'), '--out', str(tmp_path/'f'), '--crop', '32', '--batch', '2',
                        '--steps', '1', '--layout', '--layout-masks', 'footprint', '--quiet'], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    assert read_meta(tmp_path/'f')['model']['layout_masks'] == 'footprint'
    # masks for a model without a layout channel: one line, nothing written
    r = subprocess.run([str(BIN/'synthkit'), 'train-ddpm', str(tmp_path/'sim'), '--out', str(tmp_path/'n'), '--crop', '32',
                        '--steps', '1', '--layout-masks', 'footprint', '--quiet'], capture_output=True, text=True, env=ENV)
    assert r.returncode != 0 and "layout_masks='footprint' is for a layout model" in r.stderr and '--layout' in r.stderr
    assert 'Traceback' not in r.stderr and not (tmp_path/'n').exists()
