"""The tuning panel's logic without a browser: set widget values, press buttons, check what the outputs hold."""
import sys
import threading
import time
import types

import numpy as np
import pytest

from synthkit.data.items import Dataset, Item
from synthkit.errors import SynthkitError
from synthkit.generators import GENERATORS, Generator, GenParams, derive_seed
from synthkit.images import save_image
from synthkit.grids import BOX_COLOUR, PASTED_COLOUR, grid_png
from synthkit.output_cache import generator_spec, output_key
from synthkit.tuning import TuningPanel


class NoiseGenerator(Generator):
    name, knobs = 'noise', frozenset({'strength', 'seed'})
    calls = 0

    def _run(self, x, boxes, cls, params, seeds):
        type(self).calls += len(seeds)
        return [np.clip(x + np.random.default_rng(s).normal(0, params.strength / 4, x.shape), 0, 1) for s in seeds]


class GatedGenerator(NoiseGenerator):
    "Each output waits for `gate` (so a test can see the panel mid-run)."
    name, knobs = 'gated', frozenset({'strength', 'seed', 'guidance', 'prompt', 'negative_prompt', 'steps'})

    def __init__(self):
        self.gate, self.started = threading.Semaphore(0), threading.Event()

    def _run(self, x, boxes, cls, params, seeds):
        self.started.set()
        assert self.gate.acquire(timeout=20), 'test never released the gate'
        return super()._run(x, boxes, cls, params, seeds)


class BrokenGenerator(NoiseGenerator):
    name = 'broken'

    def _run(self, x, boxes, cls, params, seeds):
        raise SynthkitError('model folder m/ lacks config.json', 'point at a trained model')


def test_grid_png_and_errors():
    a = np.zeros((20, 30), np.uint16)
    png = grid_png([[a, None], [a, a]], [[1, 1, 5, 5]], [0], row_labels=['r0', 'r1'], col_labels=['c0', 'c1'])
    assert png.startswith(b'\x89PNG')
    from PIL import Image
    import io
    turned = np.zeros((30, 20), np.uint16)                # a quarter-turned output: fitted into its cell, not stretched
    im = np.asarray(Image.open(io.BytesIO(grid_png([[a, turned]], cell_px=60))).convert('L'))
    assert im.shape == (44, 128) and im[:40, 64 + 30].max() == 0 and im[:, 64 + 2].min() == 255  # black image, white margin
    with pytest.raises(SynthkitError, match='nothing to draw'):
        grid_png([])


def test_preview_button_fills_grid_with_source_and_variations(ds):
    p = TuningPanel(ds, NoiseGenerator(), n=3)
    before = p.w_grid.value
    p.w_image.value = 'img1'
    p.w_strength.value = 0.45
    p.w_seed.value = 11
    p.b_preview.click()
    res = p.wait(timeout=30)
    assert res.mode == 'variations' and res.item_id == 'img1' and res.params.strength == 0.45
    assert res.done == res.total == 3 and not res.cancelled and not res.error
    assert res.seeds == [derive_seed(11, 'img1', k) for k in range(3)]
    src = ds['img1'].read()
    for a in res.images[0]:
        assert a.dtype == src.dtype and a.shape == src.shape and not np.array_equal(a, src)
    assert p.w_grid.value != before and bytes(p.w_grid.value).startswith(b'\x89PNG')
    assert p.w_progress.value == 3 and p.w_progress.bar_style == 'success'
    assert list(p.w_which.options) == [0, 1, 2] and not p.b_keep.disabled
    # the same outputs as asking the generator directly (same per-output seeds)
    direct = NoiseGenerator().generate(src, n=3, params=GenParams(strength=0.45, seed=11), source_id='img1')
    assert all(np.array_equal(a, b) for a, b in zip(res.images[0], direct))


def test_preview_returns_at_once_and_cancel_keeps_finished_outputs(ds):
    g = GatedGenerator()
    p = TuningPanel(ds, g, n=4)
    t0 = time.time()
    p.b_preview.click()                       # the handler must not wait for generation
    assert time.time() - t0 < 5 and p.busy and not p.b_cancel.disabled
    assert g.started.wait(10)
    g.gate.release()                          # let exactly one output finish
    for _ in range(200):
        if p.result.done == 1: break
        time.sleep(0.02)
    p.b_cancel.click()
    g.gate.release()                          # the output in flight finishes, then the worker stops
    res = p.wait(timeout=20)
    assert res.cancelled and res.done == 2 < res.total == 4
    assert p.w_progress.bar_style == 'warning' and 'cancelled after 2 of 4' in p.w_status.value
    assert len(p.cache) == 2 and bytes(p.w_grid.value).startswith(b'\x89PNG')
    assert list(p.w_which.options) == [0, 1]


def test_new_preview_while_running_supersedes_the_old_one(ds):
    g = GatedGenerator()
    p = TuningPanel(ds, g, n=3)
    old = p.preview()
    assert g.started.wait(10)                 # output 0 of the old run is in flight
    t0 = time.time()
    new = p.set(strength=0.8).preview()       # returns at once, though the old output still holds the model
    assert time.time() - t0 < 5 and p.result is new
    for _ in range(4): g.gate.release()       # old output 0, then the new run's 3 outputs
    res = p.wait(timeout=20)
    assert res is new and res.done == 3 and not res.cancelled and old.cancelled and old.done == 1
    assert 'strength 0.8 ' in p.w_caption.value and '3/3' in p.w_caption.value and p.w_progress.value == 3


def test_cache_makes_going_back_instant(ds):
    NoiseGenerator.calls = 0
    p = TuningPanel(ds, NoiseGenerator(), n=2)
    p.set(strength=0.2).preview(); first = p.wait()
    p.set(strength=0.6).preview(); p.wait()
    assert NoiseGenerator.calls == 4
    p.set(strength=0.2).preview(); back = p.wait()
    assert NoiseGenerator.calls == 4 and all(np.array_equal(a, b) for a, b in zip(first.images[0], back.images[0]))
    p.set(n=3).preview(); p.wait()            # one more variation costs one output
    assert NoiseGenerator.calls == 5
    p.set(guidance=3.0).preview(); p.wait()   # a knob the generator ignores costs nothing
    assert NoiseGenerator.calls == 5
    g, other = NoiseGenerator(), NoiseGenerator()
    other.weights_hash = 'abc'
    assert output_key('a', g, GenParams(prompt='x'), 1) == output_key('a', g, GenParams(), 1)
    assert output_key('a', g, GenParams(), 1) != output_key('a', other, GenParams(), 1)  # another model


def test_precision_separates_previews_and_kept_outputs(ds, tmp_path):
    "The same model in bf16 and fp32 makes (slightly) different pixels: the preview cache and Keep tell them apart."
    class Precise(NoiseGenerator):
        def __init__(self, dtype): self.dtype = dtype
        def describe(self): return {**super().describe(), 'dtype': self.dtype}
    a, b = Precise('bfloat16'), Precise('float32')
    a.model_id = b.model_id = 'same/model'
    assert output_key('x', a, GenParams(), 1) != output_key('x', b, GenParams(), 1)
    p = TuningPanel(ds, {'a': a, 'b': b}, n=1)
    p.preview(); p.wait()
    assert len(p.keep(out=tmp_path/'kept')) == 1 and p.keep(out=tmp_path/'kept') == []
    p.set(generator='b').preview(); p.wait()
    with pytest.raises(SynthkitError, match=r"made with other settings \(dtype: 'bfloat16' → 'float32'\)"):
        p.keep(out=tmp_path/'kept')


def test_a_changed_generator_option_is_a_new_preview_and_keep_refuses_to_mix(ds, tmp_path):
    """Stale-cache bug: the preview key and Keep's check held the generator's name, weights, precision and knobs but
    not its options, so a preview with another option showed the old images and Keep mixed the two into one folder."""
    class Sigma(NoiseGenerator):
        def __init__(self, sigma: float = 1.0): self.sigma = sigma
        def _run(self, x, boxes, cls, params, seeds):
            return [np.clip(x + self.sigma * np.random.default_rng(s).normal(0, params.strength / 4, x.shape), 0, 1) for s in seeds]
    one, two = Sigma(1.0), Sigma(3.0)
    one.model_id = two.model_id = 'same/model'
    p = TuningPanel(ds, {'one': one, 'two': two}, n=2)
    first = p.preview(); p.wait()
    second = p.set(generator='two').preview(); p.wait()
    assert not any(np.array_equal(x, y) for x, y in zip(first.images[0], second.images[0]))   # computed, not the cached images
    assert p.keep([0], out=tmp_path/'kept')
    p.set(generator='one').preview(); p.wait()
    with pytest.raises(SynthkitError, match=r'options.sigma: 3.0 → 1.0'):
        p.keep([1], out=tmp_path/'kept')


def test_keep_refuses_a_folder_of_another_batch_size(ds, tmp_path):
    "Keep computes one output per model call; a folder synthesize filled 3 per call would mix two roundings: refused, not mixed."
    from synthkit.synthesize import synthesize
    synthesize(ds, NoiseGenerator(), 3, GenParams(strength=0.4, seed=2), tmp_path/'kept', parts={'train': ['img0']}, batch_size=3, progress=False)
    p = TuningPanel(ds, NoiseGenerator(), n=4)
    p.set(strength=0.4, seed=2).preview(); p.wait()
    with pytest.raises(SynthkitError, match='computed 3 per model call, but this run would compute 1'):
        p.keep([3], out=tmp_path/'kept')


def test_sweep_rows_of_strengths_columns_of_seeds(ds):
    p = TuningPanel(ds, NoiseGenerator(), n=3)
    p.set(mode='sweep', sweep='0.1, 0.5,0.9')
    p.b_preview.click(); res = p.wait()
    assert res.mode == 'sweep' and res.strengths == [0.1, 0.5, 0.9] and res.done == res.total == 9
    spread = [np.std(r[0].astype(float) - ds[0].read()) for r in res.images]
    assert spread[0] < spread[1] < spread[2]
    assert p.b_keep.disabled  # keep takes variations, not a sweep
    with pytest.raises(SynthkitError, match='no finished preview of variations'):
        p.keep()
    p.set(sweep='0.2, lots')
    p.b_preview.click()                       # a typo shows in the status line, nothing crashes
    assert "'0.2, lots' is not a comma-separated list" in p.w_status.value
    with pytest.raises(SynthkitError, match='strength 1.5 is outside'):
        p.sweep([0.5, 1.5])


def test_knobs_grey_out_per_generator_and_new_seed(ds):
    p = TuningPanel(ds, {'noise': NoiseGenerator(), 'full': GatedGenerator()}, seed=5)
    assert p.w_guidance.disabled and p.w_prompt.disabled and p.w_negative.disabled and p.w_steps.disabled
    p.w_generator.value = 'full'
    assert not (p.w_guidance.disabled or p.w_prompt.disabled or p.w_negative.disabled or p.w_steps.disabled)
    p.b_new_seed.click(); s1 = p.w_seed.value
    q = TuningPanel(ds, NoiseGenerator(), seed=5); q.b_new_seed.click()
    assert s1 == q.w_seed.value and p.new_seed() != s1   # seeded: reproducible, and fresh each press
    with pytest.raises(SynthkitError, match="unknown panel setting 'strenght'"):
        p.set(strenght=0.3)


def test_generator_spec_string_loads_when_picked(ds, monkeypatch):
    mod = types.ModuleType('synthkit_test_toygen')
    mod.Toy = type('Toy', (NoiseGenerator,), {'name': 'toy', '__init__': lambda self, model='': setattr(self, 'model_id', model)})
    monkeypatch.setitem(sys.modules, 'synthkit_test_toygen', mod)
    monkeypatch.setitem(GENERATORS, 'toy', 'synthkit_test_toygen:Toy')
    p = TuningPanel(ds, ['toy:some/folder'], n=1)
    assert isinstance(p.generator, mod.Toy) and p.generator.model_id == 'some/folder'
    p.preview(); p.wait()
    py, cli = p.code()
    assert "load_generator('toy:some/folder')" in py and '--generator toy:some/folder' in cli


def test_generator_error_shows_in_status_and_wait_raises(ds):
    p = TuningPanel(ds, BrokenGenerator())
    p.b_preview.click()
    with pytest.raises(SynthkitError, match='lacks config.json'):
        p.wait()
    assert 'lacks config.json' in p.w_status.value and p.w_progress.bar_style == 'danger' and p.b_keep.disabled


def test_code_gives_python_and_cli(ds):
    p = TuningPanel(ds, NoiseGenerator(), out='out/kept')
    p.set(image='img2', strength=0.35, seed=9, n=2, steps=40)
    py, cli = p.code()
    assert f"load_dataset({str(ds.root)!r})" in py and "dataset['img2']" in py
    assert 'GenParams(strength=0.35, seed=9)' in py and 'n=2' in py   # only the knobs the generator honours
    assert cli == f'synthkit generate {ds.root} --generator noise --n 2 --strength 0.35 --seed 9 --out out/kept'
    synth = pytest.importorskip('synthkit.synthesize')
    import argparse, shlex
    parser = argparse.ArgumentParser(); synth.cli_args(parser)
    args = parser.parse_args(shlex.split(cli)[2:])    # the CLI line is one `synthkit generate` accepts
    assert (args.strength, args.seed, args.n, args.generator, args.out) == (0.35, 9, 2, 'noise', 'out/kept')
    p.b_code.click()
    assert cli in p.w_code.value and p.w_code.layout.display is None
    # the Python runs and makes the outputs the panel shows (with our toy standing in for load_generator)
    p.preview(); res = p.wait()
    ns = {}
    body = '\n'.join(l for l in py.splitlines() if not l.startswith(('from synthkit.data', 'dataset =', 'gen =')))
    exec(body, dict(dataset=ds, gen=NoiseGenerator()), ns)
    assert all(np.array_equal(a[0], b) for a, b in zip(ns['outputs'], res.images[0]))   # (image, boxes, cls)


def test_keep_writes_variations_with_manifest_records(ds, tmp_path):
    synth = pytest.importorskip('synthkit.synthesize', reason='synthkit.synthesize (write_variation, Manifest) not there yet')
    p = TuningPanel(ds, NoiseGenerator(), n=3, out=tmp_path / 'kept')
    with pytest.raises(SynthkitError, match='no finished preview'):
        p.keep()
    p.set(strength=0.4, seed=2).preview(); p.wait()
    p.w_which.value = (0, 2)
    p.b_keep.click()
    assert 'kept 2 variation(s)' in p.w_status.value, p.w_status.value
    out = tmp_path / 'kept'
    recs = synth.Manifest(out).read()
    assert len(p.kept) == 2 and [r['k'] for r in recs] == [0, 2] and all(r['source'] == 'img0' for r in recs)
    r = recs[1]
    assert r['seed'] == derive_seed(2, 'img0', 2) and r['params']['strength'] == 0.4 and r['batch_size'] == 1
    assert r['generator'] == 'noise' and r['part'] == 'train' and (out / r['path']).is_file() and (out / 'data.yaml').is_file()
    kept = synth.regenerate(r, p.generator, ds)          # the record regenerates the very pixels written
    from synthkit.images import read_image
    assert np.array_equal(kept, read_image(out / r['path'])) and np.array_equal(kept, p.result.images[0][2])
    from synthkit.data.formats import load_dataset
    back = load_dataset(out)
    assert len(back) == 2 and np.allclose(back[0].boxes, ds['img0'].boxes, atol=0.01)
    assert p.keep([0]) == [] and 'were there already' in p.w_status.value   # same output again: nothing new
    p.set(strength=0.7).preview(); p.wait()
    with pytest.raises(SynthkitError, match="already holds variation k=0 of 'img0', made with other settings"):
        p.keep([0])
    with pytest.raises(SynthkitError, match='k=7 is not in the last preview'):
        p.keep([7])


def test_generator_that_moves_boxes_draws_and_keeps_moved_boxes(ds, tmp_path):
    augment = pytest.importorskip('synthkit.augment')
    pytest.importorskip('synthkit.synthesize')
    gen = augment.ClassicGenerator(looks=None)
    p = TuningPanel(ds, gen, n=4, out=tmp_path / 'kept')
    assert p.w_strength.disabled and not p.w_seed.disabled        # classic has only a seed
    p.preview(); res = p.wait()
    it = ds['img0']
    direct = gen.generate_labelled(it.read(), it.boxes, it.cls, n=4, params=p.params, source_id='img0')
    for (b, c), (im, b2, c2), a in zip(res.labels[0], direct, res.images[0]):
        assert np.allclose(b, b2) and np.array_equal(a, im)
    assert any(not np.allclose(b, it.boxes) for b, _ in res.labels[0])   # some copies were flipped / turned
    recs = p.keep()
    for r, (b, _) in zip(recs, res.labels[0]):
        assert np.allclose(r['boxes'], b, atol=1e-3)


def test_sixteen_bit_and_construction_errors(tmp_path, ds, monkeypatch):
    a = np.random.default_rng(1).integers(300, 4000, (40, 40)).astype(np.uint16)
    p16 = save_image(a, tmp_path / 'sixteen' / 'x.png')
    d16 = Dataset([Item(p16, 40, 40, [[5, 5, 15, 12]], [0], 'x')], ['ship'], root=tmp_path / 'sixteen')
    p = TuningPanel(d16, NoiseGenerator(), n=2)
    p.preview(); res = p.wait()
    assert all(v.dtype == np.uint16 and v.shape == (40, 40) for v in res.images[0]) and bytes(p.w_grid.value).startswith(b'\x89PNG')
    with pytest.raises(SynthkitError, match='the dataset has no images'):
        TuningPanel(Dataset([], ['ship']), NoiseGenerator())
    with pytest.raises(SynthkitError, match="unknown generator 'nope'"):
        TuningPanel(ds, 'nope:folder')
    synth = pytest.importorskip('synthkit.synthesize')
    (tmp_path / 'afile').write_text('x')
    with pytest.raises(SynthkitError, match='the keep folder is a file'):
        p.keep(out=tmp_path / 'afile')


def test_tuning_panel_opens_a_dataset_folder(ssdd_dev):
    p = TuningPanel(ssdd_dev, NoiseGenerator(), n=1)
    assert len(p.dataset) > 100 and p.w_image.value == p.dataset.ids[0]
    p.preview(); res = p.wait(timeout=30)
    src = p.item.read()
    assert res.images[0][0].shape == src.shape and res.images[0][0].dtype == src.dtype
    assert f"load_dataset({str(ssdd_dev)!r})" in p.code()[0]


def test_tuning_panel_drives_a_real_diffusers_backend(tmp_path, ds):
    "A tiny offline SD img2img pipeline (synthkit.testing) behind the panel: every knob live, prompt included, seeds honoured."
    tiny = pytest.importorskip('synthkit.testing')
    folder = tiny.build_tiny_sd_img2img(tmp_path / 'sd')
    big = Dataset([Item(save_image(np.kron(ds[0].read(), np.ones((2, 2), np.uint8)), tmp_path / 'big' / 'b.png'), 128, 96,
                        [[40, 20, 68, 32]], [0], 'b')], ['ship'], root=tmp_path / 'big')
    p = TuningPanel(big, f'sd-img2img:{folder}', n=2)
    assert not any(w.disabled for w in (p.w_strength, p.w_guidance, p.w_steps, p.w_prompt, p.w_negative))
    p.set(strength=0.5, steps=4, guidance=3.0, prompt='a ship at sea', seed=1).preview()
    res = p.wait(timeout=120)
    assert res.done == 2 and res.images[0][0].shape == (96, 128) and not np.array_equal(res.images[0][0], res.images[0][1])
    direct = p.generator.generate(big[0].read(), n=2, params=p.params, source_id='b', batch_size=1)
    assert all(np.array_equal(a, b) for a, b in zip(res.images[0], direct))
    py, cli = p.code()
    assert "prompt='a ship at sea'" in py and "--prompt 'a ship at sea'" in cli and '--guidance 3' in cli
    assert "dtype='fp32')" in py and '--dtype fp32' in cli   # the precision, so the code makes the same pixels elsewhere


class SeesShipAndSea:
    "Finds the toy ship where it is, and a confident second object in the open sea (no box there)."
    def predict(self, image):
        return np.array([[20, 10, 34, 16], [45, 30, 55, 40]], np.float32), np.array([0.9, 0.8], np.float32), np.array([0, 0])


def test_score_button_shows_numbers_from_the_cache(ds):
    p = TuningPanel(ds, NoiseGenerator(), n=3, detector=SeesShipAndSea(), score_n=3)
    p.set(image='img1', strength=0.3, seed=5)
    p.preview(); p.wait()
    calls = NoiseGenerator.calls
    p.b_score.click(); p.wait()
    q = p.scored
    assert q.n == 3 and [d['id'] for d in q.per_image] == ['img1#0', 'img0#0', 'img2#0']    # the picked image first
    assert NoiseGenerator.calls - calls == 2                                                # img1's output 0 was previewed
    assert q.hallucinated == 1.0 and 0 < q.ssim < 1 and not p.b_score.disabled
    html = p.w_score.value
    assert 'SSIM' in html and 'PSNR' in html and 'hallucinated 3/3' in html and 'noise σ' not in html
    assert 'KID: pass held-out real images' in html                                         # no val/test images here
    assert p.score(1).per_image[0]['id'] == 'img1#0' and NoiseGenerator.calls - calls == 2  # again: no generation


def test_score_kid_on_held_out_images_and_ddpm_noise(tmp_path):
    import synthkit.sdedit as ddpm
    from synthkit.metrics import FeatureExtractor
    from synthkit.testing import speckle_toy
    data = speckle_toy(tmp_path / 'd', n=12, size=48, splits=['train'] * 4 + ['val'] * 8)

    class FakeDDPM(NoiseGenerator):
        name, knobs = 'ddpm', frozenset({'strength', 'seed', 'steps'})
        scheduler = ddpm.sampler_scheduler()

    p = TuningPanel(data, FakeDDPM(), extractor=FeatureExtractor.random(seed=0), score_n=8)
    p.set(strength=0.4, steps=20)
    q = p.score()
    assert q.kid is not None and q.extractor == 'random(seed=0)' and q.hallucinated is None
    assert {d['id'].split('#')[0] for d in q.per_image} == set(data.ids[:4])                 # val images are KID's real side only
    sigma = ddpm.noise_sigma(0.4, 20, FakeDDPM())
    assert f'noise σ = {sigma:.1f} grey levels at strength 0.4, 20 steps' in p.w_score.value and 'KID —' not in p.w_score.value


def test_score_errors_show_under_the_button(ds, tmp_path):
    p = TuningPanel(ds, BrokenGenerator())
    p.b_score.click(); p.wait()
    assert 'lacks config.json' in p.w_score.value and 'c00' in p.w_score.value and not p.b_score.disabled and p.scored is None
    from synthkit.testing import speckle_toy
    held = speckle_toy(tmp_path / 'v', n=2, size=48, splits=['val', 'test'])
    q = TuningPanel(held, NoiseGenerator())
    q.b_score.click()
    assert 'every image of the dataset is a val or test image' in q.w_status.value



def test_the_old_widgets_module_reexports_both_panels():
    "`from synthkit.widgets import TuningPanel` (the panels' old home) still works: the same objects, the same public names."
    from synthkit import casestudy_panel, grids, output_cache, panel_text, tuning, widgets
    homes = {'display_scale': grids, 'grid_png': grids, 'OutputCache': output_cache, 'generator_spec': output_cache,
             'output_key': output_cache, 'PreviewResult': tuning, 'TuningPanel': tuning, 'noise_text': panel_text,
             'score_html': panel_text, **{n: casestudy_panel for n in casestudy_panel.__all__}}
    assert set(widgets.__all__) == set(homes) and set(tuning.__all__) == {'PreviewResult', 'TuningPanel'}
    assert all(getattr(widgets, n) is getattr(m, n) for n, m in homes.items())


# ---- paste and ddpm-paste in the panel (issue 18, point 6) ----

def _split_ds(ds, splits):
    "The `ds` fixture's images with `meta['split']` set (one per image)."
    return Dataset([Item(it.path, it.width, it.height, it.boxes, it.cls, it.id, {'split': s}) for it, s in zip(ds, splits)],
                   ds.names, root=ds.root)


def _grid_cells(png, n_cols, w=64, h=48, cell_px=200, top=18, gap=4):
    "The grid PNG as RGB, with each column's image area (x0, y0, scale) (one row of source + outputs)."
    from PIL import Image
    import io
    im = np.asarray(Image.open(io.BytesIO(bytes(png))).convert('RGB'))
    f = min(cell_px / w, round(h * cell_px / w) / h)
    left = im.shape[1] - n_cols * (cell_px + gap)                 # the row labels' width (0 without them)
    return im, [(left + j * (cell_px + gap), top, f) for j in range(n_cols)]


def _edge_colours(im, cell, box):
    "The colours found along the top edge of `box` drawn in `cell` (a 3 px band, so rounding does not matter)."
    x0, y0, f = cell
    xa, xb = int(x0 + box[0] * f) + 2, int(x0 + box[2] * f) - 2
    y = int(round(y0 + box[1] * f))
    band = im[max(0, y - 1):y + 2, xa:xb].reshape(-1, 3)
    return {tuple(int(v) for v in c) for c in band}


def test_paste_previews_with_pasted_boxes_in_their_own_colour(ds, tmp_path):
    from synthkit.paste import PasteGenerator
    p = TuningPanel(ds, NoiseGenerator(), n=3, cache_dir=tmp_path / 'cache')
    assert list(p.w_generator.options) == ['noise', 'paste']         # offered by itself; no DDPM, so no ddpm-paste
    assert p.w_k.disabled and p.w_scale.disabled                      # the noise generator has no ships to paste
    p.set(generator='paste', k=2, seed=1)
    assert p.w_strength.disabled and not p.w_k.disabled and not p.w_scale.disabled and p.w_harmonizer.disabled
    p.b_preview.click(); res = p.wait(timeout=30)
    assert res.done == res.total == 3 and not res.error and isinstance(res.gen, PasteGenerator)
    it = ds['img0']
    direct = res.gen.generate_labelled(it.read(), it.boxes, it.cls, n=3, params=p.params, source_id='img0')
    placed = 0
    for (b, c), info, a, d in zip(res.labels[0], res.infos[0], res.images[0], direct):
        pa = info['paste']
        assert pa['asked'] == 2 and pa['pasted'] == list(range(1, 1 + pa['placed'])) and len(b) == 1 + pa['placed']
        assert np.array_equal(a, d[0]) and np.allclose(b, d[1]) and d.info['paste']['pasted'] == pa['pasted']
        assert np.allclose(b[0], it.boxes[0])                          # the source's ship is still there
        placed += pa['placed']
    assert placed > 0 and res.pasted() == (placed, 6)
    assert f'{placed} of 6 ships pasted' in p.w_status.value and f'{placed} of 6 ships pasted' in p.w_caption.value
    # the PNG: the inherited box green, each pasted one magenta (source + 3 outputs in one row)
    im, cells = _grid_cells(p.grid_png, 4)
    assert _edge_colours(im, cells[0], it.boxes[0]) >= {BOX_COLOUR}
    for j, ((b, _), info) in enumerate(zip(res.labels[0], res.infos[0]), start=1):
        assert BOX_COLOUR in _edge_colours(im, cells[j], b[0]) and PASTED_COLOUR not in _edge_colours(im, cells[j], b[0])
        for i in info['paste']['pasted']:
            cols = _edge_colours(im, cells[j], b[i])
            assert PASTED_COLOUR in cols and BOX_COLOUR not in cols
    # a generator that pastes nothing draws no magenta at all
    p.set(generator='noise').preview(); p.wait()
    im, _ = _grid_cells(p.grid_png, 4)
    assert not (im == PASTED_COLOUR).all(axis=2).any() and (im == BOX_COLOUR).all(axis=2).any()
    assert 'pasted' not in p.w_caption.value


def test_k_and_scale_reach_the_paste_generator(ds, tmp_path, monkeypatch):
    from synthkit import paste
    made = []
    class Spy(paste.PasteGenerator):
        def __init__(self, bank, **kw):
            made.append(kw); super().__init__(bank, **kw)
    monkeypatch.setitem(GENERATORS, 'paste', Spy)
    p = TuningPanel(ds, NoiseGenerator(), n=2, cache_dir=tmp_path / 'cache')
    p.set(generator='paste', k=1, scale=1.5, seed=3)
    assert p.w_scale.value == (1.5, 1.5)
    res = p.preview(); p.wait()
    assert made == [dict(k=1, scale=(1.5, 1.5))] and res.gen.options()['k'] == 1 and res.gen.scale == (1.5, 1.5)
    src = ds['img0'].boxes[0]
    for (b, _), info in zip(res.labels[0], res.infos[0]):
        assert info['paste']['asked'] == 1
        for i in info['paste']['pasted']:   # a 14 x 6 px ship, 1.5 times as large (turned or not)
            assert sorted(np.round(b[i][2:] - b[i][:2], 3)) == sorted(np.round((src[2:] - src[:2]) * 1.5, 3))
    p.set(k=4, scale=(0.8, 1.25)).preview(); again = p.wait()
    assert made[-1] == dict(k=4, scale=(0.8, 1.25)) and all(i['paste']['asked'] == 4 for i in again.infos[0])
    assert again.gen is not res.gen and again.gen.bank is res.gen.bank                     # a new generator, the same bank
    n_made = len(made)
    p.set(k=1, scale=1.5).preview(); back = p.wait()                                       # going back: built once, from the cache
    assert len(made) == n_made and all(np.array_equal(a, b) for a, b in zip(back.images[0], res.images[0]))
    py, cli = p.code()
    bank = res.gen.bank.folder
    assert f"load_generator('paste:{bank}', k=1, scale=(1.5, 1.5))" in py
    assert f'--generator paste:{bank}' in cli and "--option k=1 --option 'scale=(1.5, 1.5)'" in cli and '--strength' not in cli
    synth = pytest.importorskip('synthkit.synthesize')
    import argparse, shlex
    from synthkit.generators import parse_assignments
    parser = argparse.ArgumentParser(); synth.cli_args(parser)
    args = parser.parse_args(shlex.split(cli)[2:])
    assert parse_assignments(args.options, '--option') == dict(k=1, scale=(1.5, 1.5))
    for k in (0, True, 17):   # no ships would be copies of the sources; True is not a count
        with pytest.raises(SynthkitError, match=f'k={k!r} is not a number of ships in \\[1, 16\\]'): p.set(k=k)
    assert p.w_k.value == 1
    with pytest.raises(SynthkitError, match=r'scale=\(2, 1\) is not a range'):
        p.set(scale=(2, 1))


def test_the_crop_bank_holds_only_training_images_and_is_built_once(ds, tmp_path, monkeypatch):
    from synthkit import paste
    calls = []
    real = paste.CropBank.from_dataset.__func__
    def spy(cls, dataset, ids=None, **kw):
        calls.append((list(ids), sorted(kw.get('forbidden', ())))); return real(cls, dataset, ids, **kw)
    monkeypatch.setattr(paste.CropBank, 'from_dataset', classmethod(spy))
    d = _split_ds(ds, ['train', 'val', 'test'])
    p = TuningPanel(d, NoiseGenerator(), n=1, cache_dir=tmp_path / 'cache')
    p.set(generator='paste').preview(); p.wait()
    bank = p.generator.bank
    assert bank.sources == ['img0'] and calls == [(['img0'], ['img1', 'img2'])]   # val/test ids are the guard's `forbidden`
    assert bank.folder.parent == tmp_path / 'cache' / 'banks' and (bank.folder / 'crops.safetensors').is_file()
    assert {c for o in p.result.infos[0] for c in o['paste']['crop_sources']} <= {'img0'}
    q = TuningPanel(d, NoiseGenerator(), n=1, cache_dir=tmp_path / 'cache')     # another panel on the same data: read back
    q.set(generator='paste').preview(); q.wait()
    assert len(calls) == 1 and q.generator.bank.folder == bank.folder and q.generator.weights_hash == p.generator.weights_hash
    r = TuningPanel(_split_ds(ds, ['train', 'train', 'val']), NoiseGenerator(), n=1, cache_dir=tmp_path / 'cache')
    r.set(generator='paste').preview(); r.wait()                                 # other training images: another bank
    assert calls[-1] == (['img0', 'img1'], ['img2']) and r.generator.bank.sources == ['img0', 'img1']
    assert len(list((tmp_path / 'cache' / 'banks').iterdir())) == 2
    # a bank that holds a val/test image of this dataset is refused (lineage guard), shown in the status line
    leaky = paste.CropBank.from_dataset(ds, ['img0', 'img1']).save(tmp_path / 'leaky')
    s = TuningPanel(d, {'noise': NoiseGenerator(), 'mine': f'paste:{leaky}'}, n=1, cache_dir=tmp_path / 'cache')
    s.set(generator='mine').b_preview.click()
    assert "lineage guard: the crop bank holds ships of val/test image 'img1'" in s.w_status.value
    # a pasted variation of a val image is not kept into the val part
    p.set(image='img1').preview(); p.wait()
    with pytest.raises(SynthkitError, match="'img1' is a val image: its pasted variations would carry ships of training images"):
        p.keep(out=tmp_path / 'kept')
    # nothing to cut from: every image held out
    held = TuningPanel(_split_ds(ds, ['val', 'test', 'val']), NoiseGenerator(), n=1, cache_dir=tmp_path / 'cache')
    held.set(generator='paste').b_preview.click()
    assert 'the dataset has no training images to cut ship crops from' in held.w_status.value


def test_no_paste_without_boxes_or_when_switched_off(ds, tmp_path):
    empty = Dataset([Item(it.path, it.width, it.height, [], [], it.id) for it in ds], ds.names, root=ds.root)
    assert list(TuningPanel(empty, NoiseGenerator()).w_generator.options) == ['noise']
    assert list(TuningPanel(ds, NoiseGenerator(), paste=False).w_generator.options) == ['noise']


def test_keep_writes_pasted_variations_with_their_paste_record(ds, tmp_path):
    synth = pytest.importorskip('synthkit.synthesize')
    p = TuningPanel(ds, NoiseGenerator(), n=2, cache_dir=tmp_path / 'cache', out=tmp_path / 'kept')
    p.set(generator='paste', k=2, seed=5).preview(); res = p.wait()
    recs = p.keep()
    assert [r['k'] for r in recs] == [0, 1]
    for r, (b, _), info in zip(recs, res.labels[0], res.infos[0]):
        assert r['paste']['placed'] == info['paste']['placed'] and r['paste']['pasted'] == info['paste']['pasted']
        assert np.allclose(r['boxes'], b, atol=1e-3) and r['generator'] == 'paste'
        assert np.array_equal(synth.regenerate(r, res.gen, ds), res.images[0][r['k']])      # the record remakes the pixels


class FakeDDPM(NoiseGenerator):
    "Stands in for a trained DDPM: a 'ddpm' with strength, steps and seed."
    name, knobs = 'ddpm', frozenset({'strength', 'steps', 'seed'})
    model_id = 'models/ddpm'


def _fake_ddpm_paste():
    "A small `ddpm-paste` stand-in: paste's layout, then the harmonizer's output inside the pasted boxes only."
    from synthkit.paste import PasteGenerator, Labelled
    class FakeDDPMPaste(PasteGenerator):
        name, knobs = 'ddpm-paste', frozenset({'strength', 'steps', 'seed'})
        made = []
        def __init__(self, bank, harmonizer, **kw):
            type(self).made.append(dict(kw, harmonizer=harmonizer)); super().__init__(bank, **kw)
            self.harmonizer = harmonizer
        def options(self): return {**super().options(), 'harmonizer': generator_spec(self.harmonizer)}
        def generate_labelled(self, image, boxes=None, cls=None, *, n=1, params=GenParams(), seeds=None, source_id='image', batch_size=None):
            outs = []
            for o, s in zip(super().generate_labelled(image, boxes, cls, n=n, params=params, seeds=seeds, source_id=source_id), seeds):
                y = o[0].copy()
                h = self.harmonizer.generate(o[0], n=1, params=params, seeds=[s])[0]
                for i in o.info['paste']['pasted']:
                    x0, y0, x1, y1 = np.round(o[1][i]).astype(int)
                    y[y0:y1, x0:x1] = h[y0:y1, x0:x1]
                outs.append(Labelled(y, o[1], o[2], o.info))
            return outs
    return FakeDDPMPaste


def test_ddpm_paste_with_its_harmonizer_and_strength(ds, tmp_path, monkeypatch):
    "The panel's side of ddpm-paste, against a small stand-in (no DDPM weights here): harmonizer, k and the strength knob reach it."
    Fake = _fake_ddpm_paste()
    monkeypatch.setitem(GENERATORS, 'ddpm-paste', Fake)
    ddpm = FakeDDPM()
    p = TuningPanel(ds, {'my ddpm': ddpm}, n=2, cache_dir=tmp_path / 'cache')
    assert list(p.w_generator.options) == ['my ddpm', 'paste', 'ddpm-paste'] and list(p.w_harmonizer.options) == ['my ddpm']
    p.set(generator='ddpm-paste', k=2, scale=(0.9, 1.1), seed=2, strength=0.3, steps=10)
    assert not any(w.disabled for w in (p.w_strength, p.w_steps, p.w_k, p.w_scale, p.w_harmonizer)) and p.w_guidance.disabled
    res = p.preview(); p.wait()
    assert Fake.made == [dict(k=2, scale=(0.9, 1.1), harmonizer=ddpm)] and res.gen.harmonizer is ddpm
    assert res.params.strength == 0.3 and all(i['paste']['asked'] == 2 for i in res.infos[0])
    sw = p.sweep([0.2, 0.9]); p.wait()                                   # strengths down, seeds across: the same layout per column
    assert len(Fake.made) == 1 and sw.done == 4
    for j in range(2):
        assert np.allclose(sw.labels[0][j][0], sw.labels[1][j][0]) and not np.array_equal(sw.images[0][j], sw.images[1][j])
        assert sw.infos[0][j]['paste']['pasted'] == sw.infos[1][j]['paste']['pasted']
    py, cli = p.code()
    bank = res.gen.bank.folder
    assert f"load_generator('ddpm-paste:{bank}', k=2, scale=(0.9, 1.1), harmonizer='ddpm:models/ddpm')" in py
    assert 'GenParams(strength=0.3, steps=10, seed=2)' in py
    assert '--option harmonizer=ddpm:models/ddpm' in cli and '--strength 0.3' in cli and '--steps 10' in cli
    # without a DDPM in the panel, ddpm-paste is not offered; asked for by name, it says what it needs
    q = TuningPanel(ds, {'noise': NoiseGenerator(), 'dp': 'ddpm-paste'}, n=1, cache_dir=tmp_path / 'cache')
    assert 'ddpm-paste' not in q.w_generator.options and list(q.w_harmonizer.options) == []
    q.set(generator='dp').b_preview.click()
    assert 'ddpm-paste needs a DDPM to harmonize with, and the panel has none' in q.w_status.value


def test_ddpm_paste_end_to_end_with_a_tiny_ddpm(tmp_path):
    "The real `ddpm-paste` (synthkit.paste) harmonized by a tiny DDPM trained for two steps: offered, previewed, copied as code, kept."
    if 'ddpm-paste' not in GENERATORS: pytest.skip('synthkit.paste has no ddpm-paste generator yet')
    from synthkit.ddpm import DDPMConfig
    from synthkit.ddpm_train import train_ddpm
    from synthkit.generators import load_generator
    from synthkit.recipe import Recipe
    from synthkit.testing import speckle_toy
    data = speckle_toy(tmp_path / 'd', n=4, size=48, splits=['train', 'train', 'train', 'val'])
    model = train_ddpm(data, tmp_path / 'm', DDPMConfig(crop=32, channels=(16, 32), layers_per_block=1, norm_groups=8, batch=2, steps=2),
                       progress=False)
    p = TuningPanel(data, f'ddpm:{model}', n=2, cache_dir=tmp_path / 'cache', out=tmp_path / 'kept')
    assert list(p.w_generator.options) == [f'ddpm:{model}', 'paste', 'ddpm-paste'] and p.w_harmonizer.value == f'ddpm:{model}'
    p.set(generator='ddpm-paste', k=2, strength=0.4, steps=4, seed=1)
    assert not (p.w_strength.disabled or p.w_k.disabled or p.w_harmonizer.disabled)
    res = p.preview(); p.wait(timeout=120)
    assert res.done == 2 and res.gen.harmonizer is p.generators[f'ddpm:{model}']      # the panel's DDPM, not a second copy
    assert p.generator.bank.sources and set(p.generator.bank.sources) <= {'toy000', 'toy001', 'toy002'}   # toy003 is val
    for (b, _), info in zip(res.labels[0], res.infos[0]):
        assert info['harmonized']['strength'] == 0.4 and len(b) == len(data['toy000'].boxes) + info['paste']['placed']
    py, cli = p.code()
    line = next(l for l in py.splitlines() if l.startswith('gen = '))
    ns = {}; exec(line, dict(load_generator=load_generator), ns)                        # the code builds the same generator
    assert Recipe.of(ns['gen'], p.params, batch_size=1).key() == Recipe.of(res.gen, p.params, batch_size=1).key()
    recs = p.keep()
    assert len(recs) == 2 and all('paste' in r and 'harmonized' in r for r in recs)


# ---- drawn in the panel (issue 23, point 5) ----

def test_drawn_without_a_layout_ddpm_says_what_it_needs(ds, tmp_path):
    "Asked for by name with no layout DDPM in the panel: its knobs, and one status line that says what to train."
    p = TuningPanel(ds, {'noise': NoiseGenerator(), 'dr': 'drawn'}, n=1, cache_dir=tmp_path / 'cache')
    assert list(p.w_generator.options) == ['noise', 'dr', 'paste']     # no DDPM: no ddpm-paste, no second drawn
    p.set(generator='dr')
    assert not any(w.disabled for w in (p.w_strength, p.w_guidance, p.w_steps, p.w_seed, p.w_k, p.w_scale, p.w_looks))
    assert p.w_prompt.disabled and p.w_harmonizer.disabled
    p.b_preview.click()
    assert 'drawn needs a layout DDPM to draw its ships with, and the panel has none' in p.w_status.value
    assert 'synthkit train-ddpm DATA --out models/layout --layout' in p.w_status.value


def test_drawn_end_to_end_with_a_tiny_layout_ddpm(tmp_path):
    """The real `drawn` (synthkit.drawn) with a tiny layout DDPM: offered beside it (a plain DDPM gives none), its
    knobs, drawn boxes in their own colour, each new ship's distance to the bank under its output, copied as code,
    kept."""
    import torch
    from synthkit.ddpm import DDPMConfig
    from synthkit.ddpm_train import train_ddpm
    from synthkit.drawn import DrawnShipsGenerator
    from synthkit.generators import load_generator
    from synthkit.grids import DRAWN_COLOUR
    from synthkit.instances import nearest, near_copy_threshold, ship_groups, ship_patch, ship_patches
    from synthkit.recipe import Recipe
    from synthkit.testing import speckle_toy
    torch.set_num_threads(1)
    data = speckle_toy(tmp_path / 'd', n=4, size=48, splits=['train', 'train', 'train', 'val'])
    tiny = dict(crop=32, channels=(16, 32), layers_per_block=1, norm_groups=8, batch=4, minutes=None)
    layout = train_ddpm(data, tmp_path / 'layout', DDPMConfig(**tiny, steps=4, layout=True), progress=False,
                        dtype='fp32')
    plain = train_ddpm(data, tmp_path / 'plain', DDPMConfig(**tiny, steps=2), progress=False, dtype='fp32')
    # a plain DDPM offers no drawn; named as drawn's model, it says what it lacks
    q = TuningPanel(data, {'plain': f'ddpm:{plain}', 'dr': f'drawn:{plain}'}, n=1, cache_dir=tmp_path / 'cache')
    assert list(q.w_generator.options) == ['plain', 'dr', 'paste', 'ddpm-paste']
    q.set(generator='dr').b_preview.click()
    assert 'has no layout channel' in q.w_status.value and '--layout' in q.w_status.value
    p = TuningPanel(data, [f'ddpm:{plain}', f'ddpm:{layout}'], n=2, cache_dir=tmp_path / 'cache', out=tmp_path / 'kept')
    assert list(p.w_generator.options) == [f'ddpm:{plain}', f'ddpm:{layout}', 'paste', 'ddpm-paste', 'drawn']
    p.set(generator='drawn', k=2, strength=1.0, steps=4, guidance=2.0, seed=1)
    assert not any(w.disabled for w in (p.w_strength, p.w_guidance, p.w_steps, p.w_seed, p.w_k, p.w_scale, p.w_looks))
    assert p.w_prompt.disabled and p.w_negative.disabled and p.w_harmonizer.disabled
    res = p.preview(); p.wait(timeout=300)
    gen = res.gen
    assert res.done == 2 and isinstance(gen, DrawnShipsGenerator) and gen.k == 2 and gen.empty == 'copy'
    assert str(gen.ddpm.folder) == str(layout) and gen.bank is p.bank()
    assert set(gen.bank.sources) <= {'toy000', 'toy001', 'toy002'}                        # toy003 is val
    it = data['toy000']
    # the grid: the source's boxes green, each drawn one cyan (a row label for the strength: the cells sit right of it)
    im, cells = _grid_cells(p.grid_png, 3, w=48, h=48)
    refs = np.stack([ship_patch(c.image, c.box) for c in gen.bank.crops])
    threshold = near_copy_threshold(refs, groups=ship_groups(gen.bank.crops))
    assert res.threshold == pytest.approx(threshold)
    drawn = 0
    for j, ((b, _), info, a) in enumerate(zip(res.labels[0], res.infos[0], res.images[0]), start=1):
        d = info['drawn']
        assert d['asked'] == 2 and d['new'] == list(range(len(it.boxes), len(b))) and not d['checked']
        assert BOX_COLOUR in _edge_colours(im, cells[j], b[0])
        for i in d['new']: assert DRAWN_COLOUR in _edge_colours(im, cells[j], b[i])
        # under the output: one distance per new ship, as synthkit.instances measures it
        want = nearest(ship_patches(a, b[d['new']]), refs) if d['new'] else []
        assert np.allclose(res.near[0][j - 1], want, atol=1e-3)
        line = next(l for l in p.w_ships.value.split('<br>') if l.startswith(f'k={j - 1}: '))
        assert line.startswith(f"k={j - 1}: {d['placed']}/2 drawn · nearest crop ")
        assert len(line.split('nearest crop ')[1].split(' (')[0].split()) == len(d['new'])
        assert f'(near-copy &lt; {threshold:.2f}' in line
        drawn += d['placed']
    assert drawn > 0 and (im == DRAWN_COLOUR).all(axis=2).any() and not (im == PASTED_COLOUR).all(axis=2).any()
    assert f'{drawn} of 4 ships drawn (cyan boxes' in p.w_status.value
    assert f'{drawn} of 4 ships drawn' in p.w_caption.value
    # copy as code: the same generator, the same pixels
    py, cli = p.code()
    line = next(l for l in py.splitlines() if l.startswith('gen = '))
    assert line.startswith(f"gen = load_generator('drawn:{layout}', bank='{gen.bank.folder}', k=2, ")
    assert "empty='copy'" in line and '--option empty=copy' in cli and '--guidance 2' in cli and '--parts train' in cli
    ns = {}; exec(line, dict(load_generator=load_generator), ns)
    assert Recipe.of(ns['gen'], p.params, batch_size=1).key() == Recipe.of(gen, p.params, batch_size=1).key()
    again = ns['gen'].generate_labelled(it.read(), it.boxes, it.cls, n=2, params=p.params, source_id=it.id)
    assert all(np.array_equal(o[0], a) and np.allclose(o[1], b)
               for o, a, (b, _) in zip(again, res.images[0], res.labels[0]))
    # another k: a new generator, the panel keeps one drawn (one copy of the model) per label
    p.set(k=1).preview(); p.wait(timeout=300)
    assert p.result.gen is not gen and [k[0] for k in p._built] == ['drawn']
    recs = p.keep()
    assert len(recs) == 2 and all(r['generator'] == 'drawn' and 'drawn' in r for r in recs)
    p.set(image='toy003').preview(); p.wait(timeout=300)                   # a val image: previewed, never kept
    with pytest.raises(SynthkitError, match="'toy003' is a val image: its drawn variations would carry ships"):
        p.keep()
    # a sweep: the same lines, one per cell, named by strength and k
    p.set(image='toy000').sweep([0.6, 1.0]); sw = p.wait(timeout=300)
    lines = p.w_ships.value.split('<br>')
    assert sw.done == 4
    assert [l.split(':')[0] for l in lines] == [f'strength {s}, k={k}' for s in ('0.6', '1') for k in (0, 1)]
