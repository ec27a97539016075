"""The four diffusers backends through `Generator.generate`, on tiny offline pipelines (synthkit.testing): dtype / shape
preservation, seeds, knob validation, offline error messages, ControlNet conditions."""
import json
import warnings

import numpy as np
import pytest

from synthkit.errors import SynthkitError
from synthkit.generators import GenParams, load_generator, generator_class, derive_seed

BACKENDS = ['sd-img2img', 'unclip', 'sd-variation', 'controlnet']
CASES = {'sd-img2img': 'sd-img2img', 'sdxl-img2img': 'sd-img2img',   # test case -> the generator that runs it
         'unclip': 'unclip', 'sd-variation': 'sd-variation', 'controlnet': 'controlnet'}
P = GenParams(strength=0.5, steps=2, seed=3, prompt='a ship')   # img2img: 1 step; unCLIP / variations: 2


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    from synthkit import testing as tiny
    d = tmp_path_factory.mktemp('tiny')
    return {'sd-img2img': tiny.build_tiny_sd_img2img(d/'sd'), 'sdxl-img2img': tiny.build_tiny_sdxl_img2img(d/'sdxl'),
            'unclip': tiny.build_tiny_unclip(d/'unclip'),
            'sd-variation': tiny.build_tiny_image_variation(d/'variation'), 'controlnet': tiny.build_tiny_controlnet(d/'cn')}


@pytest.fixture(scope='module')
def gens(folders):
    return {case: load_generator(f'{name}:{folders[case]}') for case, name in CASES.items()}


def sources():
    rng = np.random.default_rng(0)
    return {'u8': (rng.random((32, 40)) * 255).astype(np.uint8),
            'u16': (rng.random((36, 42)) * 4000 + 1000).astype(np.uint16)}   # not multiples of 8


@pytest.mark.parametrize('name', CASES)
@pytest.mark.parametrize('kind', ['u8', 'u16'])
def test_generate_keeps_dtype_shape_range(gens, name, kind):
    src = sources()[kind]
    out = gens[name].generate(src, [[5, 5, 20, 25]], [0], n=2, params=P, source_id='a')
    assert len(out) == 2
    for o in out:
        assert o.dtype == src.dtype and o.shape == src.shape
        if kind == 'u16': assert o.min() >= src.min() and o.max() <= src.max()
    assert not np.array_equal(out[0], out[1])


def test_rgb_source_stays_rgb(gens):
    src = (np.random.default_rng(1).random((48, 48, 3)) * 255).astype(np.uint8)
    o = gens['sd-img2img'].generate(src, n=1, params=P)[0]
    assert o.shape == src.shape and o.dtype == np.uint8


@pytest.mark.parametrize('name', CASES)
def test_seeds_reproduce(gens, name):
    src = sources()['u8']
    g = gens[name]
    a = g.generate(src, n=2, params=P, source_id='x', batch_size=1)
    b = g.generate(src, n=2, params=P, source_id='x', batch_size=1)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    # output k depends only on its own seed: asking for k alone gives the same image
    c = g.generate(src, n=1, params=P, seeds=[derive_seed(P.seed, 'x', 1)])
    assert np.array_equal(c[0], a[1]) and not np.array_equal(a[0], a[1])


@pytest.mark.parametrize('name', ['sd-img2img', 'sdxl-img2img'])
def test_batching_changes_only_rounding(gens, name):
    src = sources()['u8']
    a = gens[name].generate(src, n=3, params=P, batch_size=1)
    b = gens[name].generate(src, n=3, params=P, batch_size=3)
    # other kernels for another batch size (oneDNN / MKL choose blockings and sum orders by batch, threads and CPU): in
    # float32 a pixel may cross a rounding boundary (measured: ≤ 1 grey level on ≤ 0.03 % of the pixels, batch 1/2/3,
    # 1 or 2 threads, oneDNN on or off); another seed differs everywhere
    d = np.stack([np.abs(u.astype(int) - v) for u, v in zip(a, b)])
    assert d.max() <= 2 and d.mean() <= 0.01, (d.max(), d.mean())


def test_knobs_declared():
    assert generator_class('sd-variation').knobs == {'guidance', 'steps', 'seed'}
    for name in ('sd-img2img', 'unclip', 'controlnet'):
        assert {'strength', 'prompt', 'seed'} <= generator_class(name).knobs


def test_knob_validation(gens, folders):
    src = sources()['u8']
    with pytest.raises(SynthkitError, match='strength=0 is outside'):
        gens['sd-img2img'].generate(src, params=GenParams(strength=0))
    with pytest.raises(SynthkitError, match=r'runs 0 denoising steps — use steps ≥ 5'):
        gens['controlnet'].generate(src, params=GenParams(strength=0.2, steps=3))
    with pytest.raises(SynthkitError, match="condition='depth' is not one of boxes, canny"):
        load_generator(f'controlnet:{folders["controlnet"]}', condition='depth')
    with pytest.raises(SynthkitError, match='conditioning_scale=-1 must be'):
        load_generator(f'controlnet:{folders["controlnet"]}', conditioning_scale=-1)
    with pytest.raises(SynthkitError, match="dtype='int8' is not one of"):
        load_generator(f'sd-img2img:{folders["sd-img2img"]}', dtype='int8')
    with pytest.raises(SynthkitError, match='smaller than the 16 px'):
        gens['unclip'].generate(src[:10], params=P)


def test_unclip_strength_is_noise_level(gens):
    g = gens['unclip']
    assert g.noise_level(0.5) == 500 and g.noise_level(1.0) == 999


def test_cpu_options(folders):
    import torch
    if torch.cuda.is_available(): pytest.skip('checks the CPU fallbacks')
    with pytest.warns(UserWarning, match='float16 needs a CUDA GPU'):
        g = load_generator(f'sd-img2img:{folders["sd-img2img"]}', dtype='fp16', attention_slicing=True, vae_slicing=True,
                           cpu_offload=True)
    assert g.options_applied == dict(device='cpu', dtype='float32', attention_slicing=True, vae_slicing=True)
    assert g.generate(sources()['u8'], params=P)[0].dtype == np.uint8
    with pytest.raises(SynthkitError, match="device='cuda' asked for, but torch sees no CUDA GPU"):
        load_generator(f'sd-img2img:{folders["sd-img2img"]}', device='cuda')


@pytest.mark.parametrize('case', ['sd-img2img', 'sdxl-img2img', 'controlnet'])
def test_gpu_options(folders, case):
    "The small-GPU options for real: fp16, attention / VAE slicing, model CPU offload (needs CUDA; never run in CI)."
    import torch
    if not torch.cuda.is_available(): pytest.skip('needs a CUDA GPU (test_cpu_options checks the CPU fallbacks)')
    src, p = sources()['u16'], P.replace(steps=4)
    plain = load_generator(f'{CASES[case]}:{folders[case]}', device='cuda', dtype='fp16')
    small = load_generator(f'{CASES[case]}:{folders[case]}', device='cuda', dtype='fp16', attention_slicing=True,
                           vae_slicing=True, cpu_offload=True)
    assert small.options_applied == dict(device='cuda', dtype='float16', attention_slicing=True, vae_slicing=True, cpu_offload=True)
    assert small.pipe.unet.dtype == torch.float16
    a, b = plain.generate(src, n=2, params=p), small.generate(src, n=2, params=p)
    assert all(v.dtype == np.uint16 and v.shape == src.shape for v in a + b) and not np.array_equal(a[0], a[1])
    assert np.array_equal(small.generate(src, n=2, params=p)[1], b[1])           # seeded on the GPU too
    # slicing and offload change where and in which order things are computed, not what: far less than another seed does
    d = lambda u, v: np.abs(u.astype(int) - v).mean()
    assert max(d(a[0], b[0]), d(a[1], b[1])) < 0.2 * d(a[0], a[1])


def test_ddpm_on_gpu(tmp_path):
    "The in-domain DDPM trains and generates on CUDA (bf16 where the GPU has it natively)."
    import torch
    if not torch.cuda.is_available(): pytest.skip('needs a CUDA GPU')
    from synthkit.ddpm import DDPMConfig
    from synthkit.ddpm_train import train_ddpm
    from synthkit.precision import resolve_dtype
    from synthkit.testing import speckle_toy
    toy = speckle_toy(tmp_path/'toy', n=3, size=40)
    m = train_ddpm(toy, tmp_path/'m', DDPMConfig(crop=32, channels=(16, 32), layers_per_block=1, norm_groups=8, batch=2, steps=3),
                   progress=False, device='cuda')
    g = load_generator(f'ddpm:{m}', device='cuda')
    assert g.describe()['dtype'] == ('bfloat16' if resolve_dtype('auto', 'ddpm', 'cuda') == 'bf16' else 'float32')
    v = g.generate(toy[0].read(), n=2, params=GenParams(strength=0.5, steps=4, seed=1))
    assert len(v) == 2 and v[0].shape == toy[0].read().shape and np.array_equal(v[1], g.generate(toy[0].read(), n=2, params=GenParams(strength=0.5, steps=4, seed=1))[1])


def test_describe(gens):
    d = gens['controlnet'].describe()
    assert d['generator'] == 'controlnet' and len(d['weights_hash']) == 16 and d['condition'] == 'boxes'
    assert d['pipeline'] == 'StableDiffusionControlNetImg2ImgPipeline' and d['dtype'] == 'float32'
    assert gens['sd-img2img'].pipe.safety_checker is None
    # the pipeline class follows the folder's model_index.json: an SDXL folder runs the SDXL img2img pipeline
    assert gens['sd-img2img'].describe()['pipeline'] == 'StableDiffusionImg2ImgPipeline'
    assert gens['sdxl-img2img'].describe()['pipeline'] == 'StableDiffusionXLImg2ImgPipeline'


@pytest.mark.parametrize('name', BACKENDS)
def test_missing_hub_id_offline(name, monkeypatch):
    monkeypatch.delenv('SYNTHKIT_ONLINE', raising=False)
    with pytest.raises(SynthkitError) as e:
        load_generator(f'{name}:no-such-org/no-such-model')
    msg = str(e.value)
    assert "'no-such-org/no-such-model'" in msg and 'local folder' in msg and 'hf download' in msg, msg


def test_missing_and_wrong_folders(tmp_path, folders):
    with pytest.raises(SynthkitError, match='does not exist'):
        load_generator(f'sd-img2img:{tmp_path/"nope"}')
    with pytest.raises(SynthkitError, match='has no model_index.json'):
        load_generator(f'unclip:{tmp_path}')
    bad = tmp_path/'bad'; bad.mkdir(); (bad/'model_index.json').write_text('{oops')
    with pytest.raises(SynthkitError, match='model_index.json is not valid JSON'):
        load_generator(f'sd-variation:{bad}')
    with pytest.raises(SynthkitError, match='holds a StableDiffusionImg2ImgPipeline pipeline, which the unclip generator cannot run'):
        load_generator(f'unclip:{folders["sd-img2img"]}')
    # a complete index whose weights are gone
    broken = tmp_path/'broken'; broken.mkdir()
    (broken/'model_index.json').write_text(json.dumps({'_class_name': 'StableDiffusionImg2ImgPipeline',
                                                       'unet': ['diffusers', 'UNet2DConditionModel']}))
    with pytest.raises(SynthkitError, match='could not load sd-img2img pipeline'):
        load_generator(f'sd-img2img:{broken}')


def test_controlnet_conditions(folders, gens):
    from synthkit.diffusion import box_condition, canny_condition
    src = sources()['u8']
    boxes = np.array([[8, 10, 30, 26]], np.float32)
    x = src.astype(np.float32) / 255
    gb = gens['controlnet']
    gc = load_generator(f'controlnet:{folders["controlnet"]}', condition='canny')
    cb, cc = gb.control_image(x, boxes), gc.control_image(x, boxes)
    assert np.array_equal(cb, box_condition(x.shape, boxes)) and cb.shape == (32, 40, 3)
    assert cb[10:26, 8:30].all() and cb.sum() == 3 * 16 * 22
    assert np.array_equal(cc, canny_condition(x)) and not np.array_equal(cb, cc)
    ob = gb.generate(src, boxes, n=1, params=P)[0]
    oc = gc.generate(src, boxes, n=1, params=P)[0]
    ob2 = gb.generate(src, boxes + 6, n=1, params=P)[0]
    assert not np.array_equal(ob, oc) and not np.array_equal(ob, ob2)   # the condition steers the output
