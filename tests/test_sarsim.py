"""synthkit.sarsim: determinism, exact boxes, the `synthkit simulate` command and its error messages."""
import hashlib, subprocess, sys
from pathlib import Path

import numpy as np
import pytest

from synthkit.errors import SynthkitError
from synthkit.sarsim import SceneParams, simulate, simulate_scene, parse_overrides, scene_seed
from synthkit.data.formats import load_yolo

ROOT = Path(__file__).resolve().parents[1]
SYNTHKIT = ROOT/'.venv'/'bin'/'synthkit'


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob('*')) if p.is_file() and p.suffix in ('.png', '.txt', '.yaml', '.json')
            and p.name != 'data.yaml'}   # data.yaml holds the absolute path of its folder


def test_same_seed_same_bytes_any_workers(tmp_path):
    simulate(tmp_path/'a', n=5, seed=7, workers=2, progress=False)
    simulate(tmp_path/'b', n=5, seed=7, workers=1, progress=False)
    simulate(tmp_path/'c', n=5, seed=8, workers=1, progress=False)
    a, b, c = _digest(tmp_path/'a'), _digest(tmp_path/'b'), _digest(tmp_path/'c')
    assert len(a) == 12 and a == b       # 5 images + 5 labels + sarsim.json + hulls.json
    assert a != c


def test_scene_does_not_depend_on_n(tmp_path):
    simulate(tmp_path/'small', n=2, seed=3, workers=1, progress=False)
    simulate(tmp_path/'big', n=4, seed=3, workers=2, progress=False)
    small, big = _digest(tmp_path/'small'), _digest(tmp_path/'big')
    assert all(big[k] == v for k, v in small.items() if k not in ('sarsim.json', 'hulls.json'))
    import json   # each scene's hulls are the same too
    hs, hb = (json.loads((tmp_path/n/'hulls.json').read_text()) for n in ('small', 'big'))
    assert hs and all(hb[k] == v for k, v in hs.items())


@pytest.mark.parametrize('params', [SceneParams(), SceneParams(land_p=1.0), SceneParams(width=(600, 800), height=(400, 800))])
def test_boxes_inside_and_nonempty(params):
    for s in range(12):
        img, boxes, cls = simulate_scene(s, params)
        h, w = img.shape
        assert img.dtype == np.uint8 and params.width[0] <= w <= params.width[1] and params.height[0] <= h <= params.height[1]
        assert boxes.dtype == np.float32 and cls.dtype == np.int64 and len(boxes) == len(cls) >= 1 and (cls == 0).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert ((boxes[:, 2:] - boxes[:, :2]) >= 1).all()
        assert boxes.round().tolist() == boxes.tolist()     # pixel edges: tight boxes of hull pixels
        sea = np.median(img)
        for x0, y0, x1, y1 in boxes.astype(int):
            assert img[y0:y1, x0:x1].max() > sea          # something bright under every label


def test_loaded_dataset_matches_scenes(tmp_path):
    ds = simulate(tmp_path/'d', n=3, seed=11, workers=1, progress=False)
    assert ds.names == ['ship'] and len(ds) == 3 and not ds.report.skipped_images
    for i, it in enumerate(ds):
        img, boxes, _ = simulate_scene(scene_seed(11, i))
        assert it.id == f'sarsim_{i:06d}' and np.array_equal(it.read(), img)
        assert np.allclose(it.boxes, boxes, atol=0.01)


def test_cli_writes_loadable_dataset(tmp_path):
    out = tmp_path/'sim'
    r = subprocess.run([str(SYNTHKIT), 'simulate', '--out', str(out), '--n', '4', '--seed', '5', '--quiet', '--set', 'land_p=0.5'],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert 'wrote 4 scenes' in r.stdout and 'data.yaml' in r.stdout
    ds = load_yolo(out/'data.yaml')
    assert len(ds) == 4 and ds.n_boxes >= 4 and ds.names == ['ship']
    assert sorted(p.name for p in (out/'images'/'train').iterdir()) == [f'sarsim_{i:06d}.png' for i in range(4)]


@pytest.mark.parametrize('args, words', [
    (['--n', '0'], ['n=0', 'at least one scene']),
    (['--n', '-3'], ['n=-3']),
    (['--seed', '-1'], ['seed=-1']),
    (['--workers', '0'], ['workers=0']),
    (['--set', 'width=[800, 300]'], ['width=(800, 300)', 'not a range']),
    (['--set', 'height=[10, 400]'], ['height=(10, 400)']),
    (['--set', 'nope=1'], ["unknown scene knob 'nope'", 'land_p']),
    (['--set', 'land_p'], ['KEY=VALUE']),
    (['--set', 'width=[a,b]'], ['not a number']),
])
def test_cli_bad_arguments(tmp_path, args, words):
    r = subprocess.run([str(SYNTHKIT), 'simulate', '--out', str(tmp_path/'x'), '--quiet', *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    msg = r.stderr.strip()
    assert msg.startswith('synthkit simulate: error:') and len(msg.splitlines()) == 1, msg
    for w in words: assert w in msg, msg


def test_api_errors(tmp_path):
    for kw, word in [(dict(n=0), 'n=0'), (dict(n=2.5), 'n=2.5'), (dict(seed=-2), 'seed=-2'), (dict(suffix='.bmp'), ".bmp")]:
        with pytest.raises(SynthkitError, match=word.replace('.', r'\.')): simulate(tmp_path/'e', **{'n': 1, **kw}, progress=False)
    (tmp_path/'file').write_text('x')
    with pytest.raises(SynthkitError, match='is a file'): simulate(tmp_path/'file', n=1, progress=False)
    for bad in [dict(width=(300,)), dict(looks=(0, 2)), dict(min_visible=1.5), dict(ship_length=(-1, 0.5))]:
        with pytest.raises(SynthkitError): simulate_scene(0, SceneParams(**bad))


def test_refuses_to_mix_with_other_files(tmp_path):
    simulate(tmp_path, n=3, seed=0, workers=1, progress=False)
    with pytest.raises(SynthkitError, match='would mix'): simulate(tmp_path, n=2, seed=0, progress=False)
    assert len(simulate(tmp_path, n=2, seed=0, overwrite=True, progress=False)) == 2
    assert len(list((tmp_path/'images'/'train').iterdir())) == 2
