"""One recipe decides every cache and check. Changing anything that changes a generator's pixels gives a new key — every
constructor option of every registered backend (tiny models), its precision, weights, knobs and batch size — and the
stale-cache cases that once slipped through (an option the resume check, regenerate, the grid's keys did not hold) are
refused or recomputed. The tests of the stale cases use only the public API, so they also run against older code."""
import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from synthkit.errors import SynthkitError
from synthkit.generators import GENERATORS, Generator, GenParams, generator_class, load_generator

P = GenParams(strength=0.5, steps=2, seed=3, prompt='a ship')
TINY_DDPM = dict(crop=32, channels=(16, 32), layers_per_block=1, norm_groups=8, batch=2)
OWN = ('device', 'dtype', 'batch_size')   # options a recipe holds in fields of their own (tested apart)
# another value for every constructor option of every registered backend: a new option fails the test until it has one
OTHER = dict(tile=32, overlap=16, channels_last=False, eta=1.0, solver='ddim', spacing='trailing', clip=True,     # ddpm
             attention_slicing=True, vae_slicing=True, cpu_offload=True, safety_checker=True,      # diffusers
             condition='canny', conditioning_scale=0.3, canny_low=10, canny_high=250, controlnet='<folder>/controlnet',
             flips=False, turns=False, looks=2.0,                                                  # classic
             k=1, scale=1.0, feather=1.0, gap=5.0, sea_tolerance=None, tries=5,                    # paste
             pad=1, harmonizer_options=dict(eta=1.0),                                              # ddpm-paste
             prior_width=1.6, window=96, verify_iou=0.5, verify_conf=0.2, detector_imgsz=64, empty='copy')   # drawn


class FindsNothing:
    "A stand-in real-data detector for drawn's `detector` option: it finds no ship."
    weights_hash = 'nothing'
    def predict(self, image, conf=0.0): return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)


OTHER['detector'] = FindsNothing()


class Sigma(Generator):
    "A toy backend with an option of its own: `sigma` scales its noise."
    name, knobs, batch_size = 'sigma', frozenset({'strength', 'seed'}), 2
    def __init__(self, sigma: float = 1.0): self.sigma = sigma
    def _run(self, x, boxes, cls, params, seeds):
        return [np.clip(x + self.sigma * np.random.default_rng(s).normal(0, params.strength / 4, x.shape), 0, 1) for s in seeds]


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    "A tiny model folder for every registered backend that needs one."
    from synthkit import testing as tiny
    from synthkit.ddpm import DDPMConfig
    from synthkit.ddpm_train import train_ddpm
    from synthkit.paste import CropBank
    d = tmp_path_factory.mktemp('models')
    toy = tiny.speckle_toy(d/'toy', n=3, size=32)
    return {'ddpm': train_ddpm(toy, d/'ddpm', DDPMConfig(**TINY_DDPM, steps=1), progress=False),
            'drawn': train_ddpm(toy, d/'layout', DDPMConfig(**TINY_DDPM, steps=1, layout=True), progress=False),
            'sd-img2img': tiny.build_tiny_sd_img2img(d/'sd'), 'unclip': tiny.build_tiny_unclip(d/'unclip'),
            'sd-variation': tiny.build_tiny_image_variation(d/'variation'), 'controlnet': tiny.build_tiny_controlnet(d/'cn'),
            'classic': None, 'paste': CropBank.from_dataset(toy, margin=1).save(d/'bank')} | {'ddpm-paste': d/'bank'}


def _needs(name, models) -> dict:
    "Options a backend cannot be loaded without, besides its model: ddpm-paste's harmonizer (the tiny DDPM), drawn's bank."
    return {'ddpm-paste': dict(harmonizer=f"ddpm:{models['ddpm']}"), 'drawn': dict(bank=models['paste'])}.get(name, {})


def _load(name, models, **options):
    spec = name if models[name] is None else f'{name}:{models[name]}'
    options = {k: (str(models[name]/'controlnet') if v == '<folder>/controlnet' else v) for k, v in options.items()}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')   # fp16 / cpu_offload without a GPU: a warning, then float32 on the CPU
        return load_generator(spec, **_needs(name, models), **options)


def _pixels(gen, params=P, batch_size=1):
    src = np.clip(np.random.default_rng(0).gamma(2.0, 20.0, (32, 40)), 0, 255).astype(np.uint8)   # the toy's sea: room for drawn's ships
    return gen.generate(src, [[5, 5, 20, 25]], [0], n=2, params=params, source_id='a', batch_size=batch_size)


def test_registry_is_covered(models):
    assert set(models) == set(GENERATORS), 'a backend was registered: give it a tiny model here'


@pytest.mark.parametrize('name', sorted(GENERATORS))
def test_every_option_of_every_backend_is_in_the_key(models, name):
    from synthkit.recipe import Recipe
    from synthkit.generators import constructor_options
    cls = generator_class(name)
    base = _load(name, models)
    key = Recipe.of(base, P).key()
    assert Recipe.of(_load(name, models), P).key() == key                                  # loaded again: the same
    opts = sorted(set(constructor_options(cls)) - set(OWN))
    missing = [o for o in opts if o not in OTHER]
    assert not missing, f'{name} has options this test gives no other value: {missing}'
    for o in opts:
        assert Recipe.of(_load(name, models, **{o: constructor_options(cls)[o]}), P).key() == key, o   # its default, given: the same
        assert Recipe.of(_load(name, models, **{o: OTHER[o]}), P).key() != key, o
    for k in ('strength', 'guidance', 'steps', 'seed', 'prompt', 'negative_prompt'):
        q = P.replace(**{k: {'strength': 0.75, 'guidance': 2.0, 'steps': 3, 'seed': 4}.get(k, 'x')})
        if k in base.knobs: assert Recipe.of(base, q).key() != key, k
        else:   # a knob it ignores: the same key, and indeed the same pixels
            assert Recipe.of(base, q).key() == key and all(np.array_equal(a, b) for a, b in zip(_pixels(base), _pixels(base, q))), k
    if base.batch_invariant:
        assert Recipe.of(base, P, 7).key() == key and all(np.array_equal(a, b) for a, b in zip(_pixels(base), _pixels(base, batch_size=2)))
    else: assert Recipe.of(base, P, 7).key() != key != Recipe.of(base, P, 1).key()


@pytest.mark.parametrize('name', sorted(GENERATORS))
def test_precision_device_and_weights_are_in_the_key(models, name, tmp_path):
    import torch
    from synthkit.recipe import Recipe
    base = _load(name, models)
    key = Recipe.of(base, P).key()
    if name != 'classic':   # classic has no precision
        for dtype in ('fp32', 'bf16', 'fp16'):
            try: g = _load(name, models, dtype=dtype)
            except SynthkitError: continue   # not a precision this backend has
            same = g.describe().get('dtype') == base.describe().get('dtype')
            assert (Recipe.of(g, P).key() == key) == same, dtype   # fp16 on a CPU runs float32: the same pixels, the same key
            if same: assert all(np.array_equal(a, b) for a, b in zip(_pixels(base), _pixels(g)))
    if torch.cuda.is_available() and name not in ('classic', 'paste'):
        assert Recipe.of(_load(name, models, device='cuda'), P).key() != key
    assert Recipe.of(base, P).replace(device='cuda').key() != key
    if models[name] is not None:   # other weights in a copy of the folder
        import shutil
        from synthkit.generators import weight_files
        other = shutil.copytree(models[name], tmp_path/'copy')
        for f in weight_files(other): f.write_bytes(f.read_bytes()[:-8] + b'\0' * 8)   # the last weights of each file
        assert Recipe.of(load_generator(f'{name}:{other}', **_needs(name, models)), P).key() != key


# ------------------------------------------------------------------ stale caches: public API only (they fail on older code)
@pytest.fixture
def toy(tmp_path):
    from synthkit.testing import speckle_toy
    return speckle_toy(tmp_path/'toy', n=3, size=32)


def test_resume_with_another_option_is_refused(toy, tmp_path):
    "The resume check held name, weights, precision and knobs but not the options: a folder of sigma=1 was 'resumed' by sigma=3."
    from synthkit.synthesize import synthesize
    p = GenParams(strength=0.5, seed=1)
    synthesize(toy, Sigma(1.0), 2, p, tmp_path/'out', progress=False)
    with pytest.raises(SynthkitError, match='made with other settings'):
        synthesize(toy, Sigma(3.0), 3, p, tmp_path/'out', progress=False)


def test_regenerate_with_another_option_is_refused(toy, tmp_path):
    from synthkit.synthesize import synthesize, regenerate, Manifest
    from synthkit.images import read_image
    synthesize(toy, Sigma(1.0), 2, GenParams(strength=0.5, seed=1), tmp_path/'out', progress=False)
    rec = Manifest(tmp_path/'out').read()[1]
    assert np.array_equal(regenerate(rec, Sigma(1.0)), read_image(tmp_path/'out'/rec['path']))
    with pytest.raises(SynthkitError, match='other settings'):
        regenerate(rec, Sigma(3.0))


def test_a_batch_invariant_generator_resumes_with_another_batch_size(toy, tmp_path):
    "The batch size decides a batched model's pixels (refused on resume) but not the classic control's (made not to matter)."
    from synthkit.synthesize import synthesize
    from synthkit.augment import ClassicGenerator
    synthesize(toy, ClassicGenerator(), 3, GenParams(seed=1), tmp_path/'c', batch_size=2, progress=False)
    assert synthesize(toy, ClassicGenerator(), 4, GenParams(seed=1), tmp_path/'c', batch_size=3, progress=False).written == 3
    synthesize(toy, Sigma(), 3, GenParams(seed=1), tmp_path/'s', batch_size=2, progress=False)
    with pytest.raises(SynthkitError, match='computed 2 per model call, but this run would compute 3'):
        synthesize(toy, Sigma(), 4, GenParams(seed=1), tmp_path/'s', batch_size=3, progress=False)


def test_an_old_manifest_is_refused_on_resume_and_checked_on_regenerate(toy, tmp_path):
    "A manifest written before records held a recipe: resume refuses it in one line; regenerate checks the recomputed bytes."
    from synthkit.synthesize import synthesize, regenerate, Manifest
    from synthkit.images import read_image
    synthesize(toy, Sigma(1.0), 2, GenParams(strength=0.5, seed=1), tmp_path/'out', progress=False)
    old = [{k: v for k, v in r.items() if k not in ('recipe', 'recipe_key')} | {'batch_size_asked': 2} for r in Manifest(tmp_path/'out').read()]
    Manifest(tmp_path/'out').rewrite(old)
    with pytest.raises(SynthkitError, match=r'out.*written before synthkit recorded their whole recipe.* new folder'):
        synthesize(toy, Sigma(1.0), 2, GenParams(strength=0.5, seed=1), tmp_path/'out', progress=False)
    assert np.array_equal(regenerate(old[1], Sigma(1.0)), read_image(tmp_path/'out'/old[1]['path']))
    with pytest.raises(SynthkitError, match='predates recorded generator options'):
        regenerate(old[1], Sigma(3.0))


def test_grid_keys_follow_the_generator_batch_size_version_and_weights(tmp_path, monkeypatch):
    "The grid's keys named the generator by its spec and options only: another default batch size, code version or weights reused old runs."
    from synthkit.grid.config import GridConfig, RunSpec, run_key
    from synthkit.sdedit import DDPMGenerator
    from synthkit.augment import ClassicGenerator
    diff, ctl = RunSpec('split_1', 0, '+2', GridConfig(), 'x'), RunSpec('split_1', 0, 'classic+2', GridConfig(), 'x')
    before = run_key(diff), run_key(ctl)
    assert run_key(replace(diff, config=GridConfig(generator_options=dict(tile=512)))) == before[0]   # a default, given: the same
    monkeypatch.setattr(DDPMGenerator, 'batch_size', 4)
    assert run_key(diff) != before[0]
    monkeypatch.undo()
    monkeypatch.setattr(ClassicGenerator, 'version', '2')
    assert run_key(ctl) != before[1] and run_key(diff) == before[0]
    monkeypatch.undo()
    folder = tmp_path/'m'; (folder/'unet').mkdir(parents=True)
    w = folder/'unet'/'diffusion_pytorch_model.safetensors'; w.write_bytes(b'one')
    spec = RunSpec('split_1', 0, '+2', GridConfig(generator=f'ddpm:{folder}'), 'x')
    k1 = run_key(spec)
    w.write_bytes(b'two!')   # retrained in place
    assert run_key(spec) != k1
