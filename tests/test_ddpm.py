"""In-domain DDPM: training mechanics, resume, the CLI and every user-facing error (tiny models, a few iterations)."""
import json, os, subprocess, sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from synthkit.errors import SynthkitError
from synthkit.generators import GenParams, load_generator
from synthkit.ddpm import DDPMConfig
from synthkit.sdedit import DDPMGenerator
from synthkit.ddpm_train import train_ddpm, training_history, sample_crops
from synthkit.masks import masked_generate, mask_composite
from synthkit.testing import speckle_toy

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1'}
TINY = dict(crop=32, channels=(16, 32), layers_per_block=1, norm_groups=8, batch=2)


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    return speckle_toy(tmp_path_factory.mktemp('toy'), n=4, size=40, splits=['train', 'train', 'train', 'val'])


@pytest.fixture(scope='module')
def model(toy, tmp_path_factory):
    return train_ddpm(toy, tmp_path_factory.mktemp('m')/'ddpm', DDPMConfig(**TINY, steps=3), progress=False)


def test_train_writes_safetensors_config_and_history(model):
    assert (model/'unet'/'diffusion_pytorch_model.safetensors').is_file() and (model/'unet'/'config.json').is_file()
    meta = json.loads((model/'synthkit_ddpm.json').read_text())
    assert meta['step'] == 3 and meta['n_train_images'] == 3   # the val image is left out
    assert meta['complete'] and meta['target_steps'] == 3
    assert training_history(model)[-1, 0] == 3
    assert not [p for p in model.rglob('.tmp-*')]


def test_resume_continues_and_refuses_another_model(toy, tmp_path):
    d = train_ddpm(toy, tmp_path/'m', DDPMConfig(**TINY, steps=2, lr_decay='constant'), progress=False)
    train_ddpm(toy, d, DDPMConfig(**TINY, steps=4, lr_decay='constant'), progress=False)   # a constant rate: more steps continue it
    assert training_history(d)[-1, 0] == 4
    with pytest.raises(SynthkitError, match='built with .*--no-resume'):
        train_ddpm(toy, d, DDPMConfig(**{**TINY, 'channels': (8, 16)}, steps=5, lr_decay='constant'), progress=False)
    train_ddpm(toy, d, DDPMConfig(**TINY, steps=1), resume=False, progress=False)
    assert training_history(d)[-1, 0] == 1


def test_config_and_data_errors(toy, tmp_path):
    with pytest.raises(SynthkitError, match='crop=36 must be'): DDPMConfig(crop=36, channels=(32, 64, 64, 128)).check()
    with pytest.raises(SynthkitError, match='object_weight=2'): DDPMConfig(object_weight=2).check()
    with pytest.raises(SynthkitError, match='no training budget.*set steps'): DDPMConfig(minutes=None, steps=None).check()
    with pytest.raises(SynthkitError, match='minutes=-1 must be > 0 or None'): DDPMConfig(minutes=-1, steps=3).check()
    with pytest.raises(SynthkitError, match='no training images among the 1'):
        train_ddpm(toy.subset([toy.ids[3]]), tmp_path/'x', DDPMConfig(**TINY, steps=1), progress=False)


def test_generator_errors(model, tmp_path):
    with pytest.raises(SynthkitError, match='does not exist'): DDPMGenerator(tmp_path/'nope')
    (tmp_path/'empty').mkdir()
    with pytest.raises(SynthkitError, match='not a synthkit DDPM folder'): DDPMGenerator(tmp_path/'empty')
    g = load_generator(f'ddpm:{model}')
    assert isinstance(g, DDPMGenerator) and g.knobs == {'strength', 'steps', 'seed'}
    with pytest.raises(SynthkitError, match='smaller than the 16 px'): g.generate(np.zeros((8, 40), np.uint8))
    with pytest.raises(SynthkitError, match='strength=1.5'): g.generate(np.zeros((32, 32), np.uint8), params=GenParams(strength=1.5))


def test_sdedit_shapes_seeds_and_odd_sizes(model):
    g = DDPMGenerator(model)
    src = (np.random.default_rng(0).random((37, 45)) * 3000 + 200).astype(np.uint16)   # odd size, 16 bit
    p = GenParams(strength=0.5, steps=6, seed=1)
    a, b = g.generate(src, n=2, params=p, source_id='s'), g.generate(src, n=2, params=p, source_id='s')
    assert a[0].shape == src.shape and a[0].dtype == np.uint16 and np.array_equal(a[0], b[0]) and not np.array_equal(a[0], a[1])
    # a strength too small for one step would return the source as its "variation": refused, naming the smallest that works
    with pytest.raises(SynthkitError, match=r'strength=0.05 with steps=6 runs 0 denoising steps — use steps ≥ 20 for this strength, or strength ≥ 0.1667 with steps=6'):
        g.generate(src, params=GenParams(strength=0.05, steps=6))
    assert not np.array_equal(g.generate(src, params=GenParams(strength=0.1667, steps=6))[0], src)


def test_crops_are_seeded_and_object_weighted(toy):
    imgs = [it.read().astype(np.float32) / 255 for it in toy]
    bxs = [it.boxes for it in toy]
    a = sample_crops(imgs, bxs, 16, 16, np.random.default_rng(3), object_weight=1.0)
    assert np.array_equal(a, sample_crops(imgs, bxs, 16, 16, np.random.default_rng(3), object_weight=1.0))
    u = sample_crops(imgs, bxs, 16, 16, np.random.default_rng(3), object_weight=0.0)
    assert a.max(axis=(1, 2)).mean() > u.max(axis=(1, 2)).mean()   # ships are the bright part


def test_cli_train_and_error(toy, tmp_path):
    from synthkit.data.formats import export_yolo
    export_yolo(toy, tmp_path/'data', {'train': toy.ids[:3], 'val': toy.ids[3:]})
    cmd = [str(BIN/'synthkit'), 'train-ddpm', str(tmp_path/'data'), '--out', str(tmp_path/'m'), '--crop', '32', '--batch', '2', '--quiet']
    r = subprocess.run(cmd + ['--steps', '2'], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    assert 'trained 2 iterations' in r.stdout and (tmp_path/'m'/'unet'/'diffusion_pytorch_model.safetensors').exists()
    meta = json.loads((tmp_path/'m'/'synthkit_ddpm.json').read_text())   # --steps alone: no wall-clock cap, complete
    assert meta['config']['minutes'] is None and meta['complete'] and meta['stopped_by'] == 'steps' and meta['target_steps'] == 2
    from synthkit.precision import resolve_dtype
    assert meta['train_dtype'] == {'bf16': 'bfloat16', 'fp32': 'float32'}[resolve_dtype('auto', 'ddpm')]   # the default: auto
    r = subprocess.run(cmd[:4] + [str(tmp_path/'m32')] + cmd[5:] + ['--steps', '1', '--dtype', 'fp32'], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path/'m32'/'synthkit_ddpm.json').read_text())['train_dtype'] == 'float32'
    r = subprocess.run(cmd + ['--steps', '1', '--dtype', 'int8'], capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and "dtype='int8' is not one of auto, fp32, bf16" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = subprocess.run([str(BIN/'synthkit'), 'train-ddpm', str(tmp_path/'data'), '--out', str(tmp_path/'m2'), '--crop', '30'],
                       capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and 'crop=30' in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_same_seed_same_weights_whatever_the_global_rng(toy, tmp_path):
    import torch
    from synthkit.generators import weights_hash
    cfg = DDPMConfig(**TINY, steps=2, minutes=None)
    torch.manual_seed(1); a = train_ddpm(toy, tmp_path/'a', cfg, progress=False)
    torch.manual_seed(2); b = train_ddpm(toy, tmp_path/'b', cfg, progress=False)
    assert weights_hash(a/'unet') == weights_hash(b/'unet')
    c = train_ddpm(toy, tmp_path/'c', DDPMConfig(**{**TINY, 'seed': 1}, steps=2, minutes=None), progress=False)
    assert weights_hash(c/'unet') != weights_hash(a/'unet')


def test_resume_in_another_precision_is_recorded(toy, tmp_path):
    d = train_ddpm(toy, tmp_path/'m', DDPMConfig(**TINY, steps=2, minutes=None, lr_decay='constant'), progress=False, dtype='fp32')
    assert json.loads((d/'synthkit_ddpm.json').read_text())['train_dtype'] == 'float32'
    train_ddpm(toy, d, DDPMConfig(**TINY, steps=3, minutes=None, lr_decay='constant'), progress=False, dtype='bf16')
    meta = json.loads((d/'synthkit_ddpm.json').read_text())
    assert meta['step'] == 3 and meta['train_dtype'] == 'bfloat16+float32'


def test_folder_from_before_head_dim_resumes_as_what_it_is(toy, tmp_path):
    "Models trained before `head_dim` was a setting were built with 8 channels per head and don't name it."
    cfg8 = DDPMConfig(**TINY, head_dim=8, steps=2, minutes=None)
    d = train_ddpm(toy, tmp_path/'m', cfg8, progress=False)
    assert json.loads((d/'unet'/'config.json').read_text())['attention_head_dim'] == 8
    meta = json.loads((d/'synthkit_ddpm.json').read_text())
    del meta['model']['head_dim']; del meta['config']['head_dim']          # what such a folder holds
    (d/'synthkit_ddpm.json').write_text(json.dumps(meta))
    train_ddpm(toy, d, DDPMConfig(**TINY, head_dim=8, steps=3, minutes=None), progress=False)
    assert training_history(d)[-1, 0] == 3
    with pytest.raises(SynthkitError, match="built with .*'head_dim': 8.*--no-resume"):
        train_ddpm(toy, d, DDPMConfig(**TINY, steps=4, minutes=None), progress=False)   # today's default: another model
    assert len(load_generator(f'ddpm:{d}').generate(np.zeros((24, 24), np.uint8), n=1, params=GenParams(strength=0.5, steps=2))) == 1


def test_cli_resumes_a_folder_from_before_head_dim(toy, tmp_path):
    from synthkit.data.formats import export_yolo
    export_yolo(toy, tmp_path/'data', {'train': toy.ids[:3], 'val': toy.ids[3:]})
    cmd = [str(BIN/'synthkit'), 'train-ddpm', str(tmp_path/'data'), '--out', str(tmp_path/'m'), '--crop', '32', '--batch', '2', '--quiet']
    assert subprocess.run(cmd + ['--steps', '1', '--head-dim', '8'], capture_output=True, text=True, env=ENV).returncode == 0
    f = tmp_path/'m'/'synthkit_ddpm.json'
    meta = json.loads(f.read_text()); del meta['model']['head_dim']; del meta['config']['head_dim']; f.write_text(json.dumps(meta))
    r = subprocess.run(cmd + ['--steps', '2'], capture_output=True, text=True, env=ENV)   # no --head-dim: the folder's
    assert r.returncode == 0 and 'trained 2 iterations' in r.stdout, r.stderr
    r = subprocess.run(cmd + ['--steps', '3', '--head-dim', '64'], capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and "'head_dim': 8" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = subprocess.run(cmd[:4] + [str(tmp_path/'new')] + cmd[5:] + ['--steps', '1'], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0 and json.loads((tmp_path/'new'/'unet'/'config.json').read_text())['attention_head_dim'] == 64
    f.write_text('{"model": ')                                                      # a damaged file: one clear line
    r = subprocess.run(cmd + ['--steps', '3'], capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and 'synthkit_ddpm.json is not valid JSON' in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    with pytest.raises(SynthkitError, match='not valid JSON.*--no-resume'): DDPMGenerator(tmp_path/'m')



def test_resuming_towards_another_length_is_refused(toy, tmp_path):
    "A cosine rate decays over the run's own `steps`: resuming towards another length would bend it (lr/10 back to ~0.6 lr)."
    d = train_ddpm(toy, tmp_path/'m', DDPMConfig(**TINY, steps=3, minutes=None, warmup=1), progress=False)
    before = _weights(d)
    for steps in (6, None):
        with pytest.raises(SynthkitError) as e:
            train_ddpm(toy, d, DDPMConfig(**TINY, steps=steps, minutes=None if steps else 1.0, warmup=1), progress=False)
        assert 'trains towards steps=3' in str(e.value) and '--steps 3' in str(e.value) and '--start' in str(e.value) and '\n' not in str(e.value)
    assert all(np.array_equal(before[k].numpy(), v.numpy()) for k, v in _weights(d).items())   # nothing written
    train_ddpm(toy, tmp_path/'more', DDPMConfig(**TINY, steps=6, minutes=None, warmup=1), start=d, progress=False)   # the way to train on
    assert training_history(tmp_path/'more')[-1, 0] == 6


def test_a_model_folder_without_its_model_settings_is_one_line(toy, model, tmp_path):
    "synthkit_ddpm.json without 'model' (hand-edited, truncated by another tool): one line, exit 2, for training and sampling."
    import shutil
    d = tmp_path/'m'; shutil.copytree(model, d)
    meta = json.loads((d/'synthkit_ddpm.json').read_text()); del meta['model']
    (d/'synthkit_ddpm.json').write_text(json.dumps(meta))
    from synthkit.data.formats import export_yolo
    export_yolo(toy, tmp_path/'data', {'train': toy.ids[:3], 'val': toy.ids[3:]})
    r = subprocess.run([str(BIN/'synthkit'), 'train-ddpm', str(tmp_path/'data'), '--out', str(d), '--crop', '32', '--batch', '2',
                        '--steps', '4', '--quiet'], capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and "has no 'model' settings" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    with pytest.raises(SynthkitError, match="has no 'model' settings.*--no-resume"): DDPMGenerator(d)


# ------------------------------------------------------------------ t_max, EMA, learning-rate decay, start, sampling
def _weights(folder):
    from safetensors.torch import load_file
    return load_file(str(Path(folder)/'unet'/'diffusion_pytorch_model.safetensors'))


def test_new_settings_are_saved_and_read_back(toy, tmp_path):
    from synthkit.ddpm import read_meta, built_model
    d = train_ddpm(toy, tmp_path/'m', DDPMConfig(**TINY, steps=2, minutes=None, t_max=300, ema=0.99, lr_decay='constant'), progress=False)
    meta = read_meta(d)
    for k, v in dict(t_max=300, ema=0.99, lr_decay='constant').items(): assert meta['config'][k] == v == meta['model'][k] == built_model(meta)[k]
    assert DDPMGenerator(d).t_max == 300
    with pytest.raises(SynthkitError, match=r"built with \{'t_max': 300\}, not \{'t_max': None\}.*--no-resume"):
        train_ddpm(toy, d, DDPMConfig(**TINY, steps=3, minutes=None, ema=0.99, lr_decay='constant'), progress=False)


def test_old_folders_keep_their_keys_and_resume_as_what_they_are(toy, tmp_path):
    "A folder from before t_max / ema / lr_decay names none of them: it is LEGACY's (no EMA, constant rate, all timesteps)."
    from synthkit.ddpm import LEGACY
    from synthkit.grid.config import without_legacy
    old = DDPMConfig(**TINY, steps=2, minutes=None, t_max=None, ema=None, lr_decay='constant')
    assert not {'t_max', 'ema', 'lr_decay'} & set(without_legacy(asdict(old)))     # its grid key is the one it had
    assert {'ema', 'lr_decay'} <= set(without_legacy(asdict(DDPMConfig())))           # the new defaults: a new key
    d = train_ddpm(toy, tmp_path/'m', old, progress=False)
    meta = json.loads((d/'synthkit_ddpm.json').read_text())
    for k in ('t_max', 'ema', 'lr_decay'): del meta['model'][k]; del meta['config'][k]
    (d/'synthkit_ddpm.json').write_text(json.dumps(meta))
    train_ddpm(toy, d, DDPMConfig(**{**asdict(old), 'steps': 3}), progress=False)
    assert training_history(d)[-1, 0] == 3 and LEGACY['ema'] is None
    with pytest.raises(SynthkitError, match=r"built with \{'ema': None, 'lr_decay': 'constant'\}, not \{'ema': 0.999, 'lr_decay': 'cosine'\}"):
        train_ddpm(toy, d, DDPMConfig(**TINY, steps=4, minutes=None), progress=False)


def test_resume_is_the_uninterrupted_run(toy, tmp_path, monkeypatch):
    "Killed after 3 of 6 iterations and resumed: the EMA (unet/), the trained weights and the optimizer are those of one run."
    import torch
    import synthkit.ddpm_train as dd
    from synthkit.ddpm_train import read_state
    cfg = DDPMConfig(**TINY, steps=6, minutes=None, warmup=2, ema=0.9, save_every_s=0)   # cosine decay from iteration 2 on
    whole = train_ddpm(toy, tmp_path/'whole', cfg, progress=False, dtype='fp32')
    real, calls = dd.sample_crops, []
    def dies_at_4th(*a, **kw):
        calls.append(1)
        if len(calls) == 4: raise KeyboardInterrupt
        return real(*a, **kw)
    monkeypatch.setattr(dd, 'sample_crops', dies_at_4th)
    with pytest.raises(KeyboardInterrupt): train_ddpm(toy, tmp_path/'cut', cfg, progress=False, dtype='fp32')
    assert json.loads((tmp_path/'cut'/'synthkit_ddpm.json').read_text())['step'] == 3
    monkeypatch.setattr(dd, 'sample_crops', real)
    cut = train_ddpm(toy, tmp_path/'cut', cfg, progress=False, dtype='fp32')
    a, b = _weights(whole), _weights(cut)
    assert all(torch.equal(a[k], b[k]) for k in a)                                     # the EMA
    sa, sb = read_state(whole), read_state(cut)
    assert all(torch.equal(sa['raw'][k], sb['raw'][k]) for k in sa['raw'])             # the trained weights
    assert any(not torch.equal(a[k], sa['raw'][k]) for k in a)                         # ... which are not the EMA
    assert all(torch.equal(sa['opt']['state'][i]['exp_avg'], sb['opt']['state'][i]['exp_avg']) for i in sa['opt']['state'])


def test_the_ema_weights_are_the_ones_sampled(model):
    import torch
    from synthkit.ddpm_train import read_state
    ema, raw = _weights(model), read_state(model)['raw']
    g = DDPMGenerator(model, channels_last=False)
    sd = {k: v.float() for k, v in g.unet.state_dict().items()}
    assert all(torch.equal(sd[k], ema[k]) for k in ema) and any(not torch.equal(sd[k], raw[k]) for k in raw)


def test_start_from_another_folder(toy, model, tmp_path):
    import torch
    from synthkit.generators import weights_hash
    from synthkit.ddpm import STATE_FILE
    d = train_ddpm(toy, tmp_path/'ft', DDPMConfig(**TINY, steps=1, minutes=None, lr=1e-12, lr_decay='constant'), start=model, progress=False)
    meta = json.loads((d/'synthkit_ddpm.json').read_text())
    assert meta['start'] == dict(folder=str(model), weights_hash=weights_hash(model, skip=(STATE_FILE,)), step=3)
    a, b = _weights(model), _weights(d)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)                       # it began at the start's EMA weights
    train_ddpm(toy, d, DDPMConfig(**TINY, steps=2, minutes=None, lr=1e-12, lr_decay='constant'), start=model, progress=False)   # the same start: resumes
    assert training_history(d)[-1, 0] == 2 and json.loads((d/'synthkit_ddpm.json').read_text())['start']['step'] == 3
    for other, said in ((dict(crop=16), "{'crop': 32}, this run with {'crop': 16}"), (dict(t_max=100), "{'t_max': None}, this run with {'t_max': 100}"),
                        (dict(channels=(8, 16)), "{'channels': [16, 32], 'head_dim': 32}, this run with {'channels': [8, 16], 'head_dim': 16}")):
        with pytest.raises(SynthkitError, match='start') as e:
            train_ddpm(toy, tmp_path/'x', DDPMConfig(**{**TINY, **other}, steps=1, minutes=None), start=model, progress=False)
        assert said in str(e.value) and "train with the start's settings" in str(e.value) and '\n' not in str(e.value)
    assert not (tmp_path/'x').exists()                                                   # refused before anything is written
    m2 = train_ddpm(toy, tmp_path/'m2', DDPMConfig(**TINY, steps=1, minutes=None), progress=False)
    with pytest.raises(SynthkitError, match='started from scratch.*not from'):   # resuming a folder: only with the start it began from
        train_ddpm(toy, m2, DDPMConfig(**TINY, steps=2, minutes=None), start=model, progress=False)


def test_strengths_refused_before_any_work(toy, tmp_path):
    d = train_ddpm(toy, tmp_path/'m', DDPMConfig(**TINY, steps=1, minutes=None, t_max=300), progress=False)
    g = DDPMGenerator(d)
    src = np.full((32, 32), 90, np.uint8)
    with pytest.raises(SynthkitError) as e: g.generate(src, params=GenParams(strength=0.5, steps=10))
    assert 'starts at t=499' in str(e.value) and 'trained on t < 300' in str(e.value) and 'strength ≤ 0.3 with steps=10' in str(e.value) \
        and 't_max ≥ 500' in str(e.value) and '\n' not in str(e.value)
    with pytest.raises(SynthkitError) as e: g.generate(src, params=GenParams(strength=0.001, steps=1000))
    assert 'adds 0.82 grey levels of noise' in str(e.value) and 'strength ≥ 0.002 with steps=1000' in str(e.value)
    assert g.unet_evals == 0
    assert g.generate(src, params=GenParams(strength=0.3, steps=10))[0].shape == src.shape and g.unet_evals == 3


def test_cli_new_settings_and_start(toy, model, tmp_path):
    from synthkit.data.formats import export_yolo
    export_yolo(toy, tmp_path/'data', {'train': toy.ids[:3], 'val': toy.ids[3:]})
    cmd = [str(BIN/'synthkit'), 'train-ddpm', str(tmp_path/'data'), '--out', str(tmp_path/'m'), '--crop', '32', '--batch', '2', '--quiet']
    r = subprocess.run(cmd + ['--steps', '1', '--t-max', '300', '--ema', 'none', '--lr-decay', 'constant'], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    assert {k: json.loads((tmp_path/'m'/'synthkit_ddpm.json').read_text())['model'][k] for k in ('t_max', 'ema', 'lr_decay')} == \
        dict(t_max=300, ema=None, lr_decay='constant')
    r = subprocess.run(cmd + ['--steps', '2', '--start', str(model)], capture_output=True, text=True, env=ENV)   # resumes m: its own settings
    assert r.returncode == 2 and 'started from scratch' in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr



# ------------------------------------------------------------------ masked SDEdit (harmonizing a window)
def _window(shape, y0, y1, x0, x1, feather=3):
    "1 inside rows y0:y1 × columns x0:x1, a linear ramp `feather` px wide around it, 0 elsewhere."
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    d = np.maximum(np.maximum(y0 - yy, yy - (y1 - 1)), np.maximum(x0 - xx, xx - (x1 - 1)))
    return np.clip(1 - d / (feather + 1), 0, 1).astype(np.float32)


def test_harmonize_keeps_the_outside_exactly_and_follows_the_seeds(model):
    from synthkit.images import to_unit
    g = DDPMGenerator(model, dtype='fp32')
    p = GenParams(strength=0.5, steps=6, seed=1)
    rng = np.random.default_rng(0)
    for src in ((rng.random((37, 45)) * 3000 + 200).astype(np.uint16),                # odd size, 16 bit
                (rng.random((40, 40)) * 7.3 - 2.1).astype(np.float32),                # float, any range: no rounding to hide behind
                np.repeat((rng.random((40, 40, 1)) * 255).astype(np.uint8), 3, 2)):  # RGB source, grey model
        mk = _window(src.shape, 10, 25, 12, 30)
        a = g.harmonize(src, mk, n=2, params=p, source_id='s')
        assert all(v.shape == src.shape and v.dtype == src.dtype for v in a)
        assert all(np.array_equal(v[mk == 0], src[mk == 0]) for v in a)                # outside: the source, bit for bit
        assert all((v[mk == 1] != src[mk == 1]).mean() > 0.5 for v in a)               # inside: re-synthesized
        assert np.array_equal(a[0], g.harmonize(src, mk, n=2, params=p, source_id='s')[0]) and not np.array_equal(a[0], a[1])
        # a mask of ones is generate's output; the per-step hook is what masked_generate uses
        ones = g.harmonize(src, np.ones(src.shape[:2]), n=2, params=p, source_id='s')
        assert all(np.array_equal(u, v) for u, v in zip(ones, g.generate(src, n=2, params=p, source_id='s')))
        assert np.array_equal(masked_generate(g, src, mk, p, [3])[0], g.harmonize(src, mk, params=p, seeds=[3])[0])
    x = to_unit(src, grey=True)[0]
    assert np.array_equal(g.sdedit(x, 0.5, 6, [4], mask=None)[0], g.sdedit(x, 0.5, 6, [4])[0])
    # rows of a mixed batch with their own masks are what each source gets alone (same batch size, same place in it)
    x2, m1, m2 = x[::-1].copy(), _window(x.shape, 5, 20, 5, 20), _window(x.shape, 20, 35, 10, 30)
    rows = g.sdedit_many([x, x2], 0.5, 6, [[5, 6], [7]], masks=[m1, m2])
    assert np.array_equal(rows[0], g.sdedit(x, 0.5, 6, [5, 6, 1], mask=m1)[0])
    assert np.array_equal(rows[2], g.sdedit(x2, 0.5, 6, [1, 2, 7], mask=m2)[2]) and np.array_equal(rows[2][m2 == 0], x2[m2 == 0])
    # an all-zero mask: the source, without running the model
    g.unet_evals = 0
    assert np.array_equal(g.harmonize(src, np.zeros(src.shape[:2], bool), params=p)[0], src) and g.unet_evals == 0


def test_harmonize_through_tiles_runs_only_the_tiles_the_mask_touches(model):
    src = (np.random.default_rng(1).random((96, 64)) * 255).astype(np.uint8)
    g = DDPMGenerator(model, dtype='fp32', tile=32, overlap=8)
    p = GenParams(strength=0.5, steps=6, seed=2)
    mk = _window(src.shape, 60, 80, 8, 24)
    g.unet_evals = 0
    v = g.harmonize(src, mk, params=p)[0]
    assert np.array_equal(v[mk == 0], src[mk == 0]) and (v[mk == 1] != src[mk == 1]).mean() > 0.5
    assert 0 < g.unet_evals < g.evals_per_image(src.shape, p)
    assert np.array_equal(g.harmonize(src, np.ones(src.shape), params=p)[0], g.generate(src, params=p)[0])


def test_masked_generate_composites_any_generator_after_the_fact(model):
    from synthkit.generators import Generator

    class Brighter(Generator):   # an img2img generator with no per-step hook
        name, channels, calls = 'brighter', 1, 0
        def _run(self, x, boxes, cls, params, seeds):
            Brighter.calls += 1
            return [np.clip(x + 0.1 + 0.01 * (s % 7), 0, 1) for s in seeds]

    src = (np.random.default_rng(2).random((32, 40)) * 200).astype(np.uint8)
    mk = np.zeros(src.shape, np.float32); mk[8:20, 10:30] = 1; mk[8:20, 30] = 0.5
    out, full = masked_generate(Brighter(), src, mk, GenParams(), [11])[0], Brighter().generate(src, seeds=[11])[0]
    assert np.array_equal(out[mk == 0], src[mk == 0]) and np.array_equal(out[mk == 1], full[mk == 1])
    assert np.array_equal(out[mk == 0.5], np.rint(0.5 * full[mk == 0.5].astype(float) + 0.5 * src[mk == 0.5]).astype(np.uint8))
    assert len(masked_generate(Brighter(), src, mk, n=3)) == 3
    Brighter.calls = 0
    assert np.array_equal(masked_generate(Brighter(), src, np.zeros(src.shape), seeds=[1])[0], src) and Brighter.calls == 0
    # per_step=False on the DDPM: its whole-image variation composited at the end; the outside exact there too
    g, p = DDPMGenerator(model, dtype='fp32'), GenParams(strength=0.5, steps=6)
    late = masked_generate(g, src, mk, p, [3], per_step=False)[0]
    assert np.array_equal(late[mk == 0], src[mk == 0]) and np.array_equal(late[mk == 1], g.generate(src, params=p, seeds=[3])[0][mk == 1])


def test_mask_errors_are_one_line_before_any_work(model):
    g = DDPMGenerator(model, dtype='fp32')
    src, p = np.zeros((40, 40), np.uint8), GenParams(strength=0.5, steps=6)
    g.unet_evals = 0
    for bad, msg in ((np.ones((40, 41)), r'mask of shape \(40, 41\) does not match the image of shape \(40, 40\) \(HxW\)'),
                     (np.ones((40, 40, 3)), r'mask of shape \(40, 40, 3\) does not match'),
                     (np.full((40, 40), 1.5), r'mask values must lie in \[0, 1\], got 1.5 … 1.5'),
                     (np.full((40, 40), -0.2), r'must lie in \[0, 1\], got -0.2'),
                     (np.where(np.eye(40) > 0, np.nan, 0.5), r'must lie in \[0, 1\].*NaN'),
                     ('window', 'mask is not an array of numbers')):
        for call in (lambda: g.harmonize(src, bad, params=p), lambda: masked_generate(g, src, bad, p, per_step=False)):
            with pytest.raises(SynthkitError, match=msg) as e: call()
            assert len(str(e.value).splitlines()) == 1
    with pytest.raises(SynthkitError, match='1 masks given for 2 sources'):
        g.sdedit_many([np.zeros((40, 40), np.float32)] * 2, 0.5, 6, [[1], [2]], masks=[np.ones((40, 40))])
    assert g.unet_evals == 0
    with pytest.raises(SynthkitError, match=r'output of shape \(20, 20\) cannot be composited onto a source of shape \(40, 40\)'):
        mask_composite(src, np.zeros((20, 20), np.uint8), np.ones((40, 40)))


# ------------------------------------------------------------------ speckle kept (trains ~30 s on 2 cores)
def test_variations_keep_the_speckle_of_simulated_sea(tmp_path):
    """Flat simulated sea (one speckle texture): a DDPM trained for 150 iterations, then variations at strength 0.3, 25
    steps. With the default sampler the sea's local variance stays within 20 % of the source's; img2img's rule (DDIM on
    evenly spaced timesteps) smooths it to about half."""
    import torch
    from synthkit.sarsim import SceneParams, simulate, simulate_scene
    from synthkit.images import to_unit
    from synthkit.sdedit import speckle_ratio, t_max_for
    flat = SceneParams(land_p=0.0, looks=(2, 2), sea_state=(0.0, 0.0), range_falloff=0.0, sea_median=(40.0, 0.0), white_point=(30.0, 30.0),
                       width=(128, 128), aspect=(1.0, 1.0), height=(128, 128))
    ds = simulate(tmp_path/'sea', n=12, seed=0, params=flat, progress=False, workers=1)
    before = torch.get_num_threads(); torch.set_num_threads(1)   # this small UNet runs fastest on one thread
    try:
        m = train_ddpm(ds, tmp_path/'m', DDPMConfig(channels=(16, 32, 32, 64), norm_groups=8, crop=32, batch=16, lr=2e-3, warmup=20,
                                                     steps=150, minutes=None, t_max=t_max_for(0.3, 25)), progress=False)
        srcs = [(to_unit(img, grey=True)[0][:96, :96].copy(), b) for img, b, _ in (simulate_scene(10_000 + k, flat) for k in range(4))]
        def kept(**options):
            ys = DDPMGenerator(m, **options).sdedit_many([x for x, _ in srcs], 0.3, 25, [[k, k + 10] for k in range(4)])
            return np.array([speckle_ratio(y, *srcs[i // 2]) for i, y in enumerate(ys)])
        new, old = kept(), kept(solver='ddim', spacing='trailing', eta=0.0)
    finally: torch.set_num_threads(before)
    assert 0.8 <= np.exp(np.log(new).mean()) <= 1.2, new
    assert np.exp(np.log(old).mean()) < 0.8, old


# ------------------------------------------------------------------ diffusers steps the sampler as the hand-written steps did
def _ref_ddim_step(eps, x, a_t, a_prev, eta, z=None):
    "One DDIM step in DDIMScheduler.step's arithmetic: the reference the diffusers solver is checked against."
    beta_t = 1 - a_t
    x0 = (x - beta_t ** 0.5 * eps) / a_t ** 0.5
    std = eta * ((1 - a_prev) / beta_t * (1 - a_t / a_prev)) ** 0.5
    x = a_prev ** 0.5 * x0 + (1 - a_prev - std ** 2) ** 0.5 * eps
    return x + std * z if eta > 0 and z is not None else x


def _ref_dpm2m_step(eps, x, a_t, a_prev, eta, z=None, last=None):
    "One DPM-Solver++(2M) step (k-diffusion's sample_dpmpp_2m_sde form) in the image's own units: the reference."
    import math
    d = (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
    if a_prev >= 1: return d, (d, None)
    s_t, s_p = math.sqrt((1 - a_t) / a_t), math.sqrt((1 - a_prev) / a_prev)
    h = math.log(s_t / s_p)
    dc = d if last is None else d + (d - last[0]) * (h / (2 * last[1]))
    y = (s_p / s_t) * math.exp(-h * eta) * (x / a_t ** 0.5) - math.expm1(-h * (1 + eta)) * dc
    if eta > 0 and z is not None: y = y + (s_p * math.sqrt(-math.expm1(-2 * h * eta))) * z
    return a_prev ** 0.5 * y, (d, h)


def _ref_denoise(g, x0, noise, timesteps, z=None, mask=None):
    "The sampler loop with the reference steps (float64 coefficients), on `g`'s UNet and schedule."
    import torch
    s = g.scheduler
    alphas = s.alphas_cumprod
    x, last = s.add_noise(x0, noise, torch.tensor([timesteps[0]])), None
    for i, t in enumerate(timesteps):
        if mask is not None and i: x = mask * x + (1 - mask) * s.add_noise(x0, noise, torch.tensor([t]))
        eps = g._unet(x, torch.full((len(x),), t, dtype=torch.long))
        a_prev = float(alphas[timesteps[i + 1]]) if i + 1 < len(timesteps) else 1.0
        zi = None if z is None or i >= len(z) else z[i]
        if g.solver == 'ddim': x = _ref_ddim_step(eps, x, float(alphas[t]), a_prev, g.eta, zi) if a_prev < 1 else \
                (x - (1 - float(alphas[t])) ** 0.5 * eps) / float(alphas[t]) ** 0.5
        else: x, last = _ref_dpm2m_step(eps, x, float(alphas[t]), a_prev, g.eta, zi, last)
    return x


@pytest.mark.parametrize('spacing', ['cubic', 'trailing'])
@pytest.mark.parametrize('solver,eta', [('dpm++2m', 0.0), ('dpm++2m', 1.0), ('ddim', 0.0), ('ddim', 1.0)])
def test_diffusers_solver_gives_the_reference_samples(model, solver, eta, spacing):
    """diffusers' DPMSolverMultistepScheduler (2M or first order, η = 0 or SDE η = 1) gives what the reference steps give on
    fixed noise, through a real (tiny) UNet, with and without a mask: the same sampler to float32 rounding."""
    import torch
    g = DDPMGenerator(model, dtype='fp32', solver=solver, spacing=spacing, eta=eta, channels_last=False)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand((2, 1, 32, 32), generator=gen) * 2 - 1
    ts = g.timesteps(0.5, 12)
    noise, z = torch.randn(x0.shape, generator=gen), torch.randn((len(ts) - 1, *x0.shape), generator=gen)
    mask = torch.zeros_like(x0); mask[..., 8:24, 8:24] = 1
    with torch.inference_mode():
        for mk in (None, mask):
            new, ref = g._denoise(x0, noise, ts, z if eta else None, mk), _ref_denoise(g, x0, noise, ts, z if eta else None, mk)
            assert (new - ref).abs().max() < 1e-5, (new - ref).abs().max()
