"""A new generator backend is one class plus one registry line: it then works in synthesize (manifest, resume), the
experiment grid (its cache key) and the tuning panel, with nothing else touched."""
import json
from dataclasses import replace

import numpy as np
import pytest

from synthkit.generators import GENERATORS, Generator, GenParams, load_generator


class Brighten(Generator):
    "A toy backend: brightens the image by a seeded amount scaled by strength."
    name, knobs = 'brighten', frozenset({'strength', 'seed'})
    def _run(self, x, boxes, cls, params, seeds):
        return [np.clip(x + params.strength * np.random.default_rng(s).uniform(0.05, 0.2), 0, 1) for s in seeds]


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(GENERATORS, 'brighten', Brighten)          # the one registry line
    return 'brighten'


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    from synthkit.testing import toy_dataset
    from synthkit.data.formats import load_dataset
    return load_dataset(toy_dataset(tmp_path_factory.mktemp('toy')/'toy', n=16, size=64, seed=4).parent)


def test_synthesize_records_and_resumes_the_new_backend(registered, toy, tmp_path):
    from synthkit.synthesize import synthesize, Manifest
    gen = load_generator(registered)
    src = toy.subset(toy.ids[:3])
    s = synthesize(src, gen, 2, GenParams(strength=0.5, seed=7), tmp_path/'out', parts={'train': src.ids}, progress=False)
    assert s.written == 6
    recs = Manifest(tmp_path/'out').read()
    assert {r['generator'] for r in recs} == {'brighten'} and {r['params']['strength'] for r in recs} == {0.5}
    again = synthesize(src, load_generator(registered), 2, GenParams(strength=0.5, seed=7), tmp_path/'out', parts={'train': src.ids}, progress=False)
    assert again.written == 0 and again.skipped == 6


def test_the_grid_caches_the_new_backend_by_its_settings(registered, toy, tmp_path):
    import random
    from synthkit.detect import DetectConfig
    from synthkit.grid.config import GridConfig
    from synthkit.grid.runner import run_grid
    def deal(ds, seed, sizes=None):
        ids = sorted(ds.ids); random.Random(seed).shuffle(ids)
        return {'split_1': dict(train=ids[:8], val=ids[8:12], test=ids[12:])}
    cfg = GridConfig(splits=('split_1',), conditions=('baseline', '+1'), seeds=(0,), passes=1,
                     generator=registered, strength=0.4, detect=DetectConfig(imgsz=64, batch=8, steps=2, warmup_steps=0))
    rows = run_grid(toy, cfg, tmp_path, split_fn=deal, progress=False)
    from pathlib import Path
    assert rows[1]['n_train_synth'] > 0 and json.loads((Path(rows[1]['run_dir'])/'spec.json').read_text())['generator'] == 'brighten'
    again = run_grid(toy, replace(cfg, strength=0.6), tmp_path, split_fn=deal, progress=False)
    assert again[0]['key'] == rows[0]['key'] and again[1]['key'] != rows[1]['key']     # its strength is in the key, not the baseline's


def test_the_tuning_panel_previews_and_keeps_the_new_backend(registered, toy, tmp_path):
    from synthkit.tuning import TuningPanel
    p = TuningPanel(toy, registered, n=2)
    assert not p.w_strength.disabled and p.w_guidance.disabled        # its knobs, read from the class
    p.set(strength=0.5, seed=3).preview(); res = p.wait(timeout=60)
    assert res.done == 2 and all((v >= toy[p.item.id].read()).all() for v in res.images[0])
    kept = p.keep(out=tmp_path/'kept')
    assert len(kept) == 2 and json.loads(json.dumps(kept[0]))['generator'] == 'brighten'
