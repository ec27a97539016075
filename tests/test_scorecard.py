"Generator scorecard on toy data: labelled outputs, fidelity, KID, TSTR (= the baseline run on real data), hallucinations, the table, quick_score."
import json
import math

import numpy as np
import pytest

from synthkit.errors import SynthkitError
from synthkit.scorecard import (Output, Scorecard, labelled_outputs, real_outputs, fidelity_scores, kid_score, tstr, hallucinations,
                                scorecard, scorecard_table, quick_score, moves_boxes, KID_MIN)
from synthkit.detect import DetectConfig, train_detector, split_images, read_curve
from synthkit.generators import Generator, GenParams
from synthkit.metrics import FeatureExtractor
from test_labelcheck import BrightBlobs   # the stand-in real-data detector: finds every bright blob of the toy images

CFG = DetectConfig(imgsz=64, steps=2, batch=8, warmup_steps=0, seed=3)


class Painter(Generator):
    "Noise of σ = 40·strength and, with probability `strength`, one unlabelled bright rectangle."
    name, knobs, batch_invariant = 'painter', frozenset({'strength', 'seed'}), True

    def _run(self, x, boxes, cls, params, seeds):
        outs = []
        for sd in seeds:
            rng = np.random.default_rng(sd)
            y = x + rng.normal(0, 40 * params.strength / 255, x.shape)
            if rng.random() < params.strength:
                w, h = rng.integers(6, 14, 2); x0, y0 = rng.integers(0, x.shape[1] - w), rng.integers(0, x.shape[0] - h)
                y[y0:y0 + h, x0:x0 + w] = rng.uniform(0.85, 1.0)
            outs.append(np.clip(y, 0, 1))
        return outs


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    "A toy data.yaml (train 20, val 10, test 10), its train part as a Dataset, a painter folder and a classic folder."
    from synthkit.testing import toy_dataset
    from synthkit.data.formats import load_dataset
    from synthkit.synthesize import synthesize
    from synthkit.augment import classic_variations
    d = tmp_path_factory.mktemp('score')
    y = toy_dataset(d / 'toy', n=40, size=64, seed=1)
    ds = load_dataset(y)
    train = ds.subset([it.id for it in ds if it.meta['split'] == 'train'])
    painter = synthesize(train, Painter(), 1, GenParams(strength=0.8, seed=0), d / 'painter', progress=False).out
    classic_variations(train, 1, d / 'classic', seed=0, progress=False)
    return dict(yaml=y, train=train, painter=painter, classic=d / 'classic', held_out=split_images(y, 'val'), dir=d)


@pytest.fixture(scope='module')
def baseline(toy):
    return train_detector(toy['yaml'], toy['dir'] / 'baseline', CFG)


def refused(fn) -> str:
    with pytest.raises(SynthkitError) as e: fn()
    return str(e.value)


def test_labelled_outputs(toy):
    outs = labelled_outputs(toy['painter'], toy['train'])
    assert len(outs) == 20 and outs[0].generator == 'painter' and outs[0].strength == 0.8 and not outs[0].moved
    assert outs[0].source is toy['train'][outs[0].source.id] and outs[0].path.is_file()
    cl = labelled_outputs(toy['classic'])                    # no Dataset: the sources come from the records' source_path
    assert cl[0].moved and cl[0].strength is None and str(cl[0].source).endswith('.png')
    assert moves_boxes('classic') and not moves_boxes(Painter()) and not moves_boxes('unregistered')


def test_unscorable_folders_are_refused(toy, tmp_path):
    assert 'no manifest.jsonl' in refused(lambda: labelled_outputs(tmp_path))
    assert 'not a folder' in refused(lambda: labelled_outputs(tmp_path / 'missing'))
    (tmp_path / 'manifest.jsonl').write_text('')
    assert 'lists no outputs' in refused(lambda: labelled_outputs(tmp_path))
    (tmp_path / 'manifest.jsonl').write_text(json.dumps(dict(source='toy0000', k=0, path='images/train/a.png')) + '\n')
    msg = refused(lambda: labelled_outputs(tmp_path))
    assert str(tmp_path) in msg and '1 of 1 manifest records have no boxes' in msg
    (tmp_path / 'manifest.jsonl').write_text(json.dumps(dict(source='toy0000', k=0, path='images/train/a.png', boxes=[[1, 1, 5, 5]], cls=[0])) + '\n')
    assert 'output image listed in the manifest is missing' in refused(lambda: labelled_outputs(tmp_path))
    # the whole scorecard stops before it writes anything
    out = toy['dir'] / 'never'
    msg = refused(lambda: scorecard(toy['train'], [toy['painter'], tmp_path], test_data=toy['yaml'], out=out, config=CFG))
    assert 'missing' in msg and not out.exists()


def test_fidelity(toy):
    f = fidelity_scores(labelled_outputs(toy['painter'], toy['train']))
    fc = fidelity_scores(labelled_outputs(toy['classic'], toy['train']))
    assert f['n'] == fc['n'] == 20 and f['skipped'] == 0 and 0 < f['ssim'] < fc['ssim'] and math.isfinite(f['psnr'])
    same = [Output(it, it.boxes, it.cls, it.id, it) for it in list(toy['train'])[:2]]
    assert fidelity_scores(same)['psnr'] == math.inf and fidelity_scores(same)['ssim'] > 1 - 1e-4
    assert fidelity_scores(real_outputs(toy['train']))['ssim'] is None                     # no sources: nothing to compare


def test_kid(toy):
    fx = FeatureExtractor.random(seed=0)
    real = kid_score(real_outputs(toy['train']), toy['held_out'], fx)
    painted = kid_score(labelled_outputs(toy['painter'], toy['train']), toy['held_out'], fx)
    assert real['n'] == 20 and real['n_real'] == 10 and set(real) >= {'kid', 'kid_std', 'extractor'}
    assert painted['kid'] > real['kid']
    assert kid_score(real_outputs(toy['train'])[:KID_MIN - 1], toy['held_out'], fx) is None


def test_tstr_of_the_real_tiles_is_the_baseline_run(toy, baseline, tmp_path):
    r = tstr(split_images(toy['yaml'], 'train'), toy['yaml'], tmp_path / 'real', CFG)
    assert r.metrics == baseline.metrics and r.map50 == baseline.metrics['map50'] and r.n_train == 20 and not r.cached
    a, b = read_curve(tmp_path / 'real' / 'detector' / 'train' / 'results.csv'), baseline.curve
    assert [c['train/box_loss'] for c in a] == [c['train/box_loss'] for c in b]
    assert tstr(split_images(toy['yaml'], 'train'), toy['yaml'], tmp_path / 'real', CFG).cached
    assert 'holds a TSTR run of other images' in refused(lambda: tstr(split_images(toy['yaml'], 'val'), toy['yaml'], tmp_path / 'real', CFG))
    assert 'also test images' in refused(lambda: tstr(split_images(toy['yaml'], 'test'), toy['yaml'], tmp_path / 'x', CFG))
    inside = toy['yaml'].parent / 'tstr'          # would write its data.yaml next to (or over) the real one
    assert 'inside the input folder' in refused(lambda: tstr(split_images(toy['yaml'], 'train'), toy['yaml'], inside, CFG))
    assert not inside.exists()
    arrays = [Output(np.zeros((64, 64), np.uint8), np.zeros((0, 4)), np.zeros(0), 'a')]
    assert 'arrays in memory' in refused(lambda: tstr(arrays, toy['yaml'], tmp_path / 'y', CFG))


def test_hallucinations(toy):
    h = hallucinations(BrightBlobs(), labelled_outputs(toy['painter'], toy['train']))
    assert h.n == 20 and 0.5 <= h.rate <= 1 and len(h.flagged) == round(h.rate * 20)
    first = next(d for d in h.per_image if d['found'])
    assert first['boxes'] and first['scores'] == [0.9] * first['found']
    assert hallucinations(BrightBlobs(), toy['train']).rate == 0
    assert hallucinations(BrightBlobs(), labelled_outputs(toy['classic'], toy['train'])).rate == 0   # boxes moved with the pixels
    it = toy['train'][0]
    assert hallucinations(BrightBlobs(), [(it.read(), it.boxes[:0], it.cls[:0])]).rate == 1            # labels lost: every ship counts
    assert hallucinations(BrightBlobs(), [(it.read(), it.boxes[:0], it.cls[:0])], conf=0.95).rate == 0


def test_scorecard_with_tstr(toy, baseline, tmp_path):
    fx = FeatureExtractor.random(seed=0)
    rows = scorecard(toy['train'], [toy['classic'], toy['painter']], real_images=toy['held_out'], extractor=fx, detector=BrightBlobs(),
                     test_data=toy['yaml'], out=tmp_path / 'sc', config=CFG)
    assert [(r.generator, r.strength, r.n) for r in rows] == [('painter', 0.8, 20), ('classic', None, 20), ('real', None, 20)]
    real = rows[-1]
    assert real.tstr_map50 == baseline.metrics['map50'] and real.ssim is None and real.hallucinated == 0 and real.kid is not None
    assert all(r.tstr_map50 is not None and r.kid is not None and r.hallucinated is not None for r in rows)
    assert rows[0].hallucinated > 0 and rows[0].flagged and rows[0].ssim < rows[1].ssim
    assert json.loads((tmp_path / 'sc' / 'scorecard.json').read_text())[0]['generator'] == 'painter'
    md = (tmp_path / 'sc' / 'scorecard.md').read_text()
    assert md.startswith('| generator | strength | n | SSIM | PSNR (dB) | KID | TSTR mAP50 | hallucinated |') and 'random(seed=0)' in md
    assert len(list((tmp_path / 'sc' / 'tstr').iterdir())) == 3


def test_scorecard_refuses_training_tiles_as_held_out(toy):
    msg = refused(lambda: scorecard(toy['train'], toy['painter'], real_images=split_images(toy['yaml'], 'train')[:8],
                                    extractor=FeatureExtractor.random()))
    assert 'one of the training tiles' in msg
    assert 'TSTR needs a folder' in refused(lambda: scorecard(toy['train'], toy['painter'], test_data=toy['yaml']))


def test_scorecard_without_optional_inputs(toy):
    rows = scorecard(toy['yaml'], {'mine': toy['painter']})                          # sources from the data.yaml's train part
    assert [(r.generator, r.strength) for r in rows] == [('mine', 0.8), ('real', None)]
    assert rows[0].ssim is not None and rows[0].kid is None and rows[0].tstr_map50 is None and rows[0].hallucinated is None
    no_fx = scorecard(toy['train'], toy['painter'], real_images=toy['held_out'], real_row=False)
    assert len(no_fx) == 1 and 'no feature extractor' in no_fx[0].notes


def test_scorecard_table():
    rows = [Scorecard('ddpm', 0.2, 10, 0.912, 27.31, 0.0123, 0.004, 0.5, 0.1, ['a']),
            dict(generator='real', n=10, psnr=math.inf, notes='KID needs ≥ 8 images on each side')]
    t = scorecard_table(rows).splitlines()
    assert t[0] == '| generator | strength | n | SSIM | PSNR (dB) | KID | TSTR mAP50 | hallucinated |'
    assert t[2] == '| ddpm | 0.2 | 10 | 0.912 | 27.3 | 0.0123 ± 0.004 | 0.500 | 10 % (1/10) |'
    assert t[3] == '| real | — | 10 | — | ∞ | — | — | — |'
    legend = scorecard_table(rows, legend=True)
    assert 'Notes: real: KID needs' in legend and legend.startswith(t[0])


def test_quick_score(toy):
    class Cache(dict):
        def put(self, k, v): self[k] = v
    cache, fx = Cache(), FeatureExtractor.random(seed=0)
    q = quick_score(Painter(), toy['train'], GenParams(strength=0.8, seed=0), n=8, detector=BrightBlobs(), extractor=fx,
                    real_images=toy['held_out'], cache=cache)
    assert q.n == 8 and len(cache) == 8 and q.kid is not None and q.hallucinated is not None and q.seconds >= 0
    assert [d['id'] for d in q.per_image][:2] == [f'{toy["train"].ids[0]}#0', f'{toy["train"].ids[1]}#0']
    # the outputs synthesize wrote (same seeds): the same fidelity
    first8 = [o for o in labelled_outputs(toy['painter'], toy['train']) if o.source.id in toy['train'].ids[:8]]
    assert abs(fidelity_scores(first8)['ssim'] - q.ssim) < 1e-6
    # from the cache: no generation at all
    class Refuses(Painter):
        def _run(self, *a): raise AssertionError('generated although cached')
    again = quick_score(Refuses(), toy['train'], GenParams(strength=0.8, seed=0), n=8, cache=cache)
    assert again.ssim == q.ssim and again.hallucinated is None and again.kid is None and 'KID' in str(again)
    few = quick_score(Painter(), toy['train'], GenParams(strength=0.2), n=3, ids=toy['train'].ids[:2], extractor=fx, real_images=toy['held_out'])
    assert few.kid is None and 'KID needs' in few.notes[0] and few.per_image[2]['id'] == f'{toy["train"].ids[0]}#1'
    assert 'outputs · SSIM' in str(few)
    with pytest.raises(SynthkitError, match='strength=0 is outside'):
        quick_score(Painter(), toy['train'], GenParams(strength=0), n=1)
