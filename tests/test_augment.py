"Classic augmentation (the control): exact box transforms on drawn pixels, dtypes, errors, the whole-dataset writer."
import numpy as np
import pytest

from synthkit.augment import augment_image, add_speckle, ClassicGenerator, classic_variations
from synthkit.errors import SynthkitError
from synthkit.generators import GenParams, derive_seed


def _scene(h, w, boxes, dtype=np.uint8, channels=None, hi=200):
    a = np.full((h, w), 10, dtype)
    for x0, y0, x1, y1 in boxes: a[y0:y1, x0:x1] = hi
    return np.repeat(a[..., None], channels, 2) if channels else a


def _found_boxes(img, thr):
    "Bounding boxes of the bright rectangles (labelled connected components)."
    from scipy import ndimage
    m = img[..., 0] if img.ndim == 3 else img
    lab, n = ndimage.label(m >= thr)
    out = []
    for sl in ndimage.find_objects(lab):
        out.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
    return np.array(sorted(out), np.float32)


@pytest.mark.parametrize('dtype,channels', [(np.uint8, None), (np.uint8, 3), (np.uint16, None)])
def test_boxes_follow_pixels_for_every_seed(dtype, channels):
    boxes = [[3, 5, 10, 9], [20, 2, 33, 6], [40, 20, 47, 29]]
    src = _scene(31, 48, boxes, dtype, channels, hi=200 if dtype == np.uint8 else 30000)
    shapes = set()
    for seed in range(24):
        img, b, c = augment_image(src, boxes, [0, 1, 0], seed, looks=None)
        assert img.dtype == src.dtype and img.ndim == src.ndim
        assert np.array_equal(_found_boxes(img, 100), np.array(sorted(b.tolist()), np.float32))
        assert sorted(c.tolist()) == [0, 0, 1]
        shapes.add(img.shape[:2])
    assert shapes == {(31, 48), (48, 31)}


def test_speckle_keeps_dtype_grey_and_mean():
    rng = np.random.default_rng(0)
    a = np.full((300, 300, 3), 80, np.uint8)
    s = add_speckle(a, rng, looks=8)
    assert s.dtype == np.uint8 and np.array_equal(s[..., 0], s[..., 1])
    assert abs(s.mean() - 80) < 1.5 and abs(s[..., 0].std() / 80 - 8 ** -0.5) < 0.02
    f = add_speckle(np.ones((50, 50), np.float32), rng, looks=2)
    assert f.dtype == np.float32 and abs(f.mean() - 1) < 0.05


def test_errors_name_the_value():
    with pytest.raises(SynthkitError, match='looks=-1 must be > 0'): ClassicGenerator(looks=-1)
    with pytest.raises(SynthkitError, match='2 boxes but 1 class ids'): augment_image(np.zeros((8, 8), np.uint8), [[0, 0, 1, 1]] * 2, [0])
    with pytest.raises(SynthkitError, match='seed=-2'): augment_image(np.zeros((8, 8), np.uint8), seed=-2)
    with pytest.raises(SynthkitError, match='not HxW'): augment_image(np.zeros((8,), np.uint8))
    with pytest.raises(SynthkitError, match='n=0'): ClassicGenerator().generate(np.zeros((8, 8), np.uint8), n=0)


def test_generator_seeds_are_per_output():
    g, src = ClassicGenerator(), _scene(20, 30, [[2, 2, 8, 6]])
    all3 = g.generate_labelled(src, [[2, 2, 8, 6]], [0], n=3, params=GenParams(seed=9), source_id='a/b')
    one = g.generate_labelled(src, [[2, 2, 8, 6]], [0], seeds=[derive_seed(9, 'a/b', 1)])
    assert np.array_equal(one[0][0], all3[1][0]) and np.array_equal(one[0][1], all3[1][1])
    assert g.describe()['generator'] == 'classic'


def test_classic_variations_writes_the_control(tmp_path):
    synth = pytest.importorskip('synthkit.synthesize', reason='synthkit.synthesize (nbs/13) is not there yet')
    from synthkit.data.items import Item, Dataset
    from synthkit.images import save_image
    items = []
    for i, split in enumerate(['train', 'train', 'val']):
        boxes = [[3 + i, 4, 12 + i, 9]]
        p = save_image(_scene(24, 40, boxes), tmp_path / 'src' / f'im{i}.png')
        items.append(Item(p, 40, 24, boxes, [0], f'im{i}', meta={'split': split}))
    ds = Dataset(items, ['ship'])
    out = tmp_path / 'control'
    summary = classic_variations(ds, 2, out, seed=3, progress=False, looks=1000)
    assert summary.written == 6 and summary.relabelled == 0 and summary.dropped == 0   # moving boxes is not relabelling
    assert 'relabelled' not in str(summary) and summary.checked == 0
    imgs = sorted((out / 'images').rglob('*.png')) + sorted((out / 'images').rglob('*.jpg'))
    assert len(imgs) == 6 and {p.parent.name for p in imgs} == {'train', 'val'}
    assert (out / 'manifest.jsonl').is_file() and '"classic"' in (out / 'manifest.jsonl').read_text()
    assert 'label_check' not in (out / 'manifest.jsonl').read_text()   # no check was asked for, none recorded
    # every written label is the box of the bright rectangle in the written image
    from synthkit.images import read_image
    for p in imgs:
        lab = out / 'labels' / p.parent.name / (p.stem + '.txt')
        img = read_image(p); h, w = img.shape[:2]
        c, xc, yc, bw, bh = map(float, lab.read_text().split())
        got = [(xc - bw / 2) * w, (yc - bh / 2) * h, (xc + bw / 2) * w, (yc + bh / 2) * h]
        assert np.allclose(got, _found_boxes(img, 100)[0], atol=0.01), p
    # the quality report reads the control's manifest: one row, no strength (classic has none)
    from synthkit.metrics import quality_report
    rows = quality_report(ds, out)
    assert [(r['generator'], r['strength'], r['n_images'], r['n_sources']) for r in rows] == [('classic', None, 6, 3)]
    assert rows[0]['ssim'] > 0.99   # speckle off (looks=1000): flips and turns are undone before comparing
    # rerun: nothing new written (resume)
    again = classic_variations(ds, 2, out, seed=3, progress=False, looks=1000)
    assert again.written == 0 and len(sorted((out / 'images').rglob('*.png'))) == 6


def test_a_label_check_sees_the_moved_boxes(tmp_path):
    "A real label check gets each output with the boxes the generator moved, and only then is anything recorded."
    from types import SimpleNamespace as NS
    from synthkit.data.items import Item, Dataset
    from synthkit.images import save_image
    from synthkit.synthesize import Manifest
    boxes = [[3, 4, 12, 9]]
    ds = Dataset([Item(save_image(_scene(24, 40, boxes), tmp_path / 'im0.png'), 40, 24, boxes, [0], 'im0')], ['ship'])
    seen = []
    def lc(image, b, c):
        seen.append(np.array_equal(_found_boxes(image, 100), np.asarray(b, np.float32))); return NS(keep=True, boxes=b, cls=c, reason='ok')
    s = classic_variations(ds, 4, tmp_path / 'out', seed=1, progress=False, looks=None, label_check=lc)
    assert seen == [True] * 4 and s.written == 4 and s.checked == 4 and s.relabelled == 0 and '0 relabelled' in str(s)
    assert all(r['label_check'] == dict(keep=True, reason='ok', relabelled=False) for r in Manifest(tmp_path / 'out').read())


def test_cli_generate_classic(tmp_path):
    "`synthkit generate DATA --generator classic`: each label file holds the boxes moved with its image's pixels."
    import subprocess, sys
    from pathlib import Path
    from synthkit.data.items import Item, Dataset
    from synthkit.data.formats import export_yolo
    from synthkit.images import save_image, read_image
    items = []
    for i in range(3):
        boxes = [[3 + 2 * i, 4, 14 + 2 * i, 9]]
        items.append(Item(save_image(_scene(24, 40, boxes), tmp_path / 'raw' / f'im{i}.png'), 40, 24, boxes, [0], f'im{i}'))
    export_yolo(Dataset(items, ['ship']), tmp_path / 'data', {'train': ['im0', 'im1'], 'val': ['im2']})
    out = tmp_path / 'out'
    r = subprocess.run([str(Path(sys.executable).parent / 'synthkit'), 'generate', str(tmp_path / 'data'), '--generator',
                        'classic:looks=None', '--n', '4', '--seed', '2', '--out', str(out), '--quiet'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + r.stdout
    assert '12 written' in r.stdout and 'relabelled' not in r.stdout
    imgs = sorted((out / 'images').rglob('*.png'))
    assert len(imgs) == 12 and {p.parent.name for p in imgs} == {'train', 'val'}
    moved = 0
    for p in imgs:
        img = read_image(p); h, w = img.shape[:2]
        c, xc, yc, bw, bh = map(float, (out / 'labels' / p.parent.name / (p.stem + '.txt')).read_text().split())
        got = [(xc - bw / 2) * w, (yc - bh / 2) * h, (xc + bw / 2) * w, (yc + bh / 2) * h]
        assert np.allclose(got, _found_boxes(img, 100)[0], atol=0.01), p
        moved += img.shape != (24, 40) or not np.allclose(got, _found_boxes(read_image(tmp_path / 'raw' / f'{p.stem[:3]}.png'), 100)[0], atol=0.01)
    assert moved >= 6   # most copies were flipped or turned
    assert 'label_check' not in (out / 'manifest.jsonl').read_text()
