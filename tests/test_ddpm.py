"""In-domain DDPM: training mechanics, resume, the CLI and every user-facing error (tiny models, a few iterations)."""
import json, os, subprocess, sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from synthkit.errors import SynthkitError
from synthkit.generators import GenParams, load_generator
from synthkit.ddpm import DDPMConfig, DDPMGenerator, train_ddpm, training_history, sample_crops
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
    d = train_ddpm(toy, tmp_path/'m', DDPMConfig(**TINY, steps=2), progress=False)
    train_ddpm(toy, d, DDPMConfig(**TINY, steps=4), progress=False)
    assert training_history(d)[-1, 0] == 4
    with pytest.raises(SynthkitError, match='built with .*--no-resume'):
        train_ddpm(toy, d, DDPMConfig(**{**TINY, 'channels': (8, 16)}, steps=5), progress=False)
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
    from synthkit.ddpm import resolve_dtype
    assert meta['train_dtype'] == {'bf16': 'bfloat16', 'fp32': 'float32'}[resolve_dtype('auto')]   # the default: auto
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
    d = train_ddpm(toy, tmp_path/'m', DDPMConfig(**TINY, steps=2, minutes=None), progress=False, dtype='fp32')
    assert json.loads((d/'synthkit_ddpm.json').read_text())['train_dtype'] == 'float32'
    train_ddpm(toy, d, DDPMConfig(**TINY, steps=3, minutes=None), progress=False, dtype='bf16')
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
