"""paste: exact boxes, no overlap, inside the image, off land; the crop bank's lineage guard and its record; k ≥ 1; byte-exact regenerate; kill and resume; bad input."""
import json, os, signal, subprocess, sys, textwrap
from pathlib import Path

import numpy as np
import pytest

from synthkit.data.items import Item, Dataset
from synthkit.errors import SynthkitError
from synthkit.generators import GenParams, Generator, derive_seed, load_generator
from synthkit.images import read_image, save_image
from synthkit.paste import CropBank, Labelled, PasteGenerator, paste_counts, paste_ships
from synthkit.recipe import Recipe
from synthkit.synthesize import Manifest, regenerate, synthesize

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1'}
SPLITS = ['train'] * 4 + ['val', 'test']


def _sea(rng, h, w, level=40.0):
    return rng.gamma(4.0, level / 4.0, (h, w))


def make_toy(folder, size=(96, 128), splits=SPLITS, seed=0, dtype=np.uint8, channels=None, boxes=True) -> Dataset:
    "Sea images with 1–2 bright ships each, away from the borders and from each other; `meta['split']` from `splits`."
    folder, rng, items = Path(folder), np.random.default_rng(seed), []
    h, w = size
    for i, sp in enumerate(splits):
        a, bx = _sea(rng, h, w), []
        for j in range(1 + i % 2 if boxes else 0):
            long = 10 + 3 * i + 4 * j   # ships of several sizes
            bw, bh = (long, 6) if (i + j) % 2 else (6, long)
            x, y = 10 + 40 * j + 2 * i, 12 + 30 * j + i
            a[y:y + bh, x:x + bw] = rng.gamma(8.0, 25.0, (bh, bw)); bx.append([x, y, x + bw, y + bh])
        a = np.clip(a * (257 if dtype == np.uint16 else 1), 0, np.iinfo(dtype).max).astype(dtype)
        if channels: a = np.repeat(a[..., None], channels, axis=2)
        p = save_image(a, folder/f'img{i}.png')
        items.append(Item(p, w, h, bx, [0] * len(bx), f'img{i}', {'split': sp}))
    return Dataset(items, ['ship'], root=folder)


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    return make_toy(tmp_path_factory.mktemp('toy'))


@pytest.fixture(scope='module')
def bank_dir(toy, tmp_path_factory):
    train = [i for i in toy.ids if toy[i].meta['split'] == 'train']
    bank = CropBank.from_dataset(toy, train, margin=4, forbidden=[i for i in toy.ids if i not in train])
    return bank.save(tmp_path_factory.mktemp('bank')/'bank')


def _overlaps(a, b, gap=0.0) -> bool:
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


# --- boxes -----------------------------------------------------------------------------------------------------------

def test_no_pasted_box_overlaps_another_and_every_one_lies_inside(toy, bank_dir):
    g = PasteGenerator(bank_dir, k=4, gap=2)
    placed = 0
    for it in toy:
        for o in g.generate_labelled(it.read(), it.boxes, it.cls, n=8, params=GenParams(seed=1), source_id=it.id):
            img, boxes, cls = o
            p = o.info['paste']
            placed += p['placed']
            assert p['placed'] == len(p['pasted']) and len(boxes) == it.n_boxes + p['placed'] == len(cls)
            assert np.array_equal(boxes[:it.n_boxes], it.boxes)              # the source's boxes, untouched
            assert p['pasted'] == list(range(it.n_boxes, len(boxes)))
            h, w = img.shape[:2]
            for i, (x0, y0, x1, y1) in zip(p['pasted'], p['windows']):
                b = boxes[i]
                assert 0 <= b[0] < b[2] <= w and 0 <= b[1] < b[3] <= h, b   # inside the image
                assert 0 <= x0 <= b[0] and b[2] <= x1 <= w and 0 <= y0 <= b[1] and b[3] <= y1 <= h   # its window too, around it
                for j in range(len(boxes)):
                    if j != i: assert not _overlaps(b, boxes[j], gap=2 - 1e-3), (b, boxes[j])
    assert placed > 100   # most of the 6 x 8 x 4 ships found a place


def test_pasted_pixels_are_the_crop_and_the_box_is_exact(toy, bank_dir):
    "With scale 1 and a hard edge, the pasted box holds exactly the crop's (moved) ship pixels."
    bank = CropBank.load(bank_dir)
    it = toy['img4']
    for seed in range(6):
        o = paste_ships(it.read(), it.boxes, it.cls, bank, seed, k=2, scale=1.0, feather=0)
        for i, ci in zip(o.info['paste']['pasted'], o.info['paste']['crops']):
            c = bank.crops[ci]
            x0, y0, x1, y1 = (int(v) for v in o[1][i])
            cb = c.box.astype(int)
            ship = c.image[cb[1]:cb[3], cb[0]:cb[2]]
            got = o[0][y0:y1, x0:x1]
            assert any(np.array_equal(got, t) for t in (np.rot90(s, k) for s in (ship, ship[::-1], ship[:, ::-1], ship[::-1, ::-1]) for k in range(4)))


def test_ships_go_on_sea_not_on_land(tmp_path, bank_dir):
    rng = np.random.default_rng(3)
    a = _sea(rng, 96, 128)
    a[:, :64] = _sea(rng, 96, 64, 160) * (1 + 4 * (rng.random((96, 64)) < 0.1))   # left half: bright, cluttered land
    img = np.clip(a, 0, 255).astype(np.uint8)
    g = PasteGenerator(bank_dir, k=3)
    n = 0
    for o in g.generate_labelled(img, [], [], n=10, params=GenParams(seed=0)):
        for i in o.info['paste']['pasted']:
            assert o[1][i][0] >= 64, o[1][i]; n += 1   # the ship itself never on land (its feathered margin may touch the coast)
    assert n >= 15
    free = PasteGenerator(bank_dir, k=3, sea_tolerance=None).generate_labelled(img, [], [], n=10, params=GenParams(seed=0))
    assert any(o[1][i][0] < 64 for o in free for i in o.info['paste']['pasted'])   # without the rule they would go there


# --- the crop bank ---------------------------------------------------------------------------------------------------

def test_bank_holds_only_the_given_training_images(toy, bank_dir):
    bank = CropBank.load(bank_dir)
    assert bank.sources == ['img0', 'img1', 'img2', 'img3'] and {c.source for c in bank.crops} <= {'img0', 'img1', 'img2', 'img3'}
    assert json.loads((bank_dir/'bank.json').read_text())['sources'] == bank.sources
    bank.check_lineage(['img4', 'img5'])
    with pytest.raises(SynthkitError, match="holds ships of test image 'img2'"): bank.check_lineage(['img2'])
    assert CropBank.from_dataset(toy).sources == bank.sources     # default: the items whose split is train


@pytest.mark.parametrize('kw, says', [
    (dict(ids=['img0', 'img5']), "ships of 'img5', a test image"),
    (dict(ids=['img0', 'img4']), "ships of 'img4', a val image"),
    (dict(ids=['img0', 'img1'], forbidden=['img1']), "ships of 'img1', a forbidden (val/test) image")])
def test_a_val_or_test_image_in_the_bank_is_refused(toy, tmp_path, kw, says):
    with pytest.raises(SynthkitError) as e: CropBank.from_dataset(toy, **kw).save(tmp_path/'b')
    assert 'lineage guard' in str(e.value) and says in str(e.value) and '\n' not in str(e.value)
    assert not (tmp_path/'b').exists()


def test_the_guard_compares_tiles_by_their_source_image(toy, tmp_path):
    "Tiles carry their image's id (`img4@x0y0`, or `dir__img4@x0y0` as a file stem): forbidding the whole image forbids its tiles."
    from synthkit.data.tiles import Tiling, tile_dataset
    tiles = tile_dataset(toy, tmp_path/'tiles', Tiling(size=64, overlap=0, keep_empty=0.0), part='train')   # every tile called train
    assert any(i.startswith('img4@') for i in tiles.ids)
    with pytest.raises(SynthkitError, match=r"ships of 'img4@x\d+y\d+', a forbidden \(val/test\) image"):
        CropBank.from_dataset(tiles, tiles.ids, forbidden=['img4', 'img5'])
    stems = Dataset([Item(it.path, it.width, it.height, it.boxes, it.cls, 'dir__' + it.id, dict(it.meta)) for it in tiles], ['ship'])
    with pytest.raises(SynthkitError, match="a forbidden"):      # a tile read back from its file: '/' written as '__'
        CropBank.from_dataset(stems, stems.ids, forbidden=['dir/img4', 'dir/img5'])
    ok = [i for i in tiles.ids if i.split('@')[0] not in ('img4', 'img5')]
    bank = CropBank.from_dataset(tiles, ok, forbidden=['img4', 'img5'])
    bank.check_lineage(['img4', 'img5'])
    with pytest.raises(SynthkitError, match=r"holds ships of val image 'img1@x\d+y\d+'"): bank.check_lineage(['img1'], 'val')


def test_a_variation_made_for_another_part_is_refused(toy):
    it = toy['img0']
    ds = Dataset([Item(it.path, it.width, it.height, it.boxes, it.cls, 'v', {'split': 'train', 'origin': 'test'})], ['ship'])
    with pytest.raises(SynthkitError, match="a variation made for the test part"): CropBank.from_dataset(ds, ['v'])


def test_dataset_without_boxes_is_refused(tmp_path):
    ds = make_toy(tmp_path, boxes=False)
    with pytest.raises(SynthkitError) as e: CropBank.from_dataset(ds)
    assert 'hold no ship boxes: nothing to paste' in str(e.value) and '\n' not in str(e.value)


def test_bank_identity_is_its_content(toy, bank_dir, tmp_path):
    from synthkit.generators import weights_hash
    g = load_generator(f'paste:{bank_dir}', k=2)
    assert g.model_id == str(bank_dir) and g.weights_hash == CropBank.load(bank_dir).content_hash() == weights_hash(bank_dir)
    assert Recipe.of(g).model == f'weights:{g.weights_hash}' and Recipe.of(g).options['k'] == 2
    assert Recipe.planned(f'paste:{bank_dir}', dict(k=2)).model == f'spec:{bank_dir}@{g.weights_hash}'
    other = CropBank.from_dataset(toy, ['img0', 'img1']).save(tmp_path/'other')
    assert PasteGenerator(other).weights_hash != g.weights_hash
    again = CropBank.from_dataset(toy, ['img0', 'img1'])
    assert again.content_hash() == PasteGenerator(other).weights_hash == PasteGenerator(again).weights_hash   # wherever it lives
    assert json.loads((other/'bank.json').read_text())['weights_hash'] == again.content_hash()
    # other pixels in the crops file: another identity
    f = other/'crops.safetensors'
    f.write_bytes(f.read_bytes()[:-8] + bytes(8))
    assert PasteGenerator(other).weights_hash not in (again.content_hash(), weights_hash(bank_dir))
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(SynthkitError, match='unreadable crop bank'): CropBank.load(other)
    with pytest.raises(SynthkitError, match='not a crop bank folder'): load_generator(f'paste:{tmp_path}')
    with pytest.raises(SynthkitError, match='needs a model'): load_generator('paste')


def test_save_writes_nothing_half_way(toy, tmp_path, monkeypatch):
    bank = CropBank.from_dataset(toy)
    real = Path.write_text
    def broken(self, *a, **k):   # the disk fills up after the crops file was written
        if self.name == 'bank.json': raise OSError('disk full')
        return real(self, *a, **k)
    monkeypatch.setattr(Path, 'write_text', broken)
    with pytest.raises(OSError): bank.save(tmp_path/'b')
    assert list(tmp_path.iterdir()) == []   # neither the bank nor a temp folder
    monkeypatch.undo()
    assert bank.save(tmp_path/'b') == tmp_path/'b' and sorted(p.name for p in (tmp_path/'b').iterdir()) == ['bank.json', 'crops.safetensors']
    with pytest.raises(SynthkitError, match='holds something else'): CropBank.from_dataset(toy, ['img0']).save(tmp_path/'b')
    CropBank.from_dataset(toy, ['img0']).save(tmp_path/'b', overwrite=True)
    assert CropBank.load(tmp_path/'b').sources == ['img0'] and [p.name for p in tmp_path.iterdir()] == ['b']


# --- counts and bad input --------------------------------------------------------------------------------------------

def test_k0_and_a_bool_k_are_refused(bank_dir):
    "k=0 would write copies of the sources; k=True would be read as 1 ship."
    for k in (0, True, False, -1, 1.5):
        with pytest.raises(SynthkitError, match=f'k={k!r} must be an integer ≥ 1'): PasteGenerator(bank_dir, k=k)
    assert PasteGenerator(bank_dir, k=1).k == 1 and PasteGenerator(bank_dir, k=np.int64(2)).k == 2


@pytest.mark.parametrize('damage, says', [(lambda t: t[:len(t) // 3], 'is not a complete record'), (lambda t: None, 'no bank.json'),
                                          (lambda t: '[]', 'a JSON list'),
                                          (lambda t: json.dumps({k: v for k, v in json.loads(t).items() if k != 'crops'}), "has no 'crops'"),
                                          (lambda t: json.dumps(dict(json.loads(t), sources=['img5'])), 'their sources differ')])
def test_a_bank_without_its_record_is_refused_and_save_writes_it_again(bank_dir, tmp_path, damage, says):
    "bank.json says where the ships come from: a bank whose record is missing, cut short or not its crops' is not used."
    d = tmp_path/'b'
    import shutil; shutil.copytree(bank_dir, d)
    text = damage((d/'bank.json').read_text())
    if text is None: (d/'bank.json').unlink()
    else: (d/'bank.json').write_text(text)
    with pytest.raises(SynthkitError, match=says): CropBank.load(d)
    with pytest.raises(SynthkitError, match=says): load_generator(f'paste:{d}')
    CropBank.load(bank_dir).save(d)   # the same crops: the record is written again
    assert CropBank.load(d).sources == CropBank.load(bank_dir).sources and json.loads((d/'bank.json').read_text()) == json.loads((bank_dir/'bank.json').read_text())


def test_too_large_crops_are_skipped_and_counted(toy, bank_dir):
    bank = CropBank.load(bank_dir)
    sizes = [c.shape for c in bank.crops]
    side = sorted(max(s) for s in sizes)[len(sizes) // 2]          # about half the crops fit a side x side image
    n_big = sum(max(s) > side for s in sizes)
    assert 0 < n_big < len(bank)
    img = np.full((side, side), 40, np.uint8)
    o = paste_ships(img, [], [], bank, 0, k=1, scale=1.0, sea_tolerance=None)
    assert o.info['paste']['too_large'] == n_big and o.info['paste']['placed'] == 1
    assert bank.crops[o.info['paste']['crops'][0]].shape[0] <= side
    none = paste_ships(np.full((8, 8), 40, np.uint8), [], [], bank, 0, k=2)
    assert none.info['paste'] == dict(asked=2, placed=0, pasted=[], crops=[], crop_sources=[], windows=[], too_large=len(bank), unlike_sea=0)


def test_impossible_k_gives_fewer_ships_and_the_record_says_how_many(toy, bank_dir, tmp_path):
    g = PasteGenerator(bank_dir, k=30, gap=3)
    s = synthesize(toy, g, 2, GenParams(seed=0), tmp_path/'out', parts={'train': ['img0', 'img1']}, progress=False)
    recs = Manifest(tmp_path/'out').read()
    assert s.written == 4
    for r in recs:
        p = r['paste']
        assert p['asked'] == 30 and 1 <= p['placed'] < 30 and len(r['boxes']) == toy[r['source']].n_boxes + p['placed']
        boxes = np.array(r['boxes'])
        for i in p['pasted']:
            assert all(not _overlaps(boxes[i], boxes[j], 3 - 1e-2) for j in range(len(boxes)) if j != i)
        label = (tmp_path/'out'/r['label']).read_text().splitlines()
        assert len(label) == len(r['boxes'])   # the YOLO label holds every ship, pasted ones included
    c = paste_counts(tmp_path/'out')
    assert c['outputs'] == 4 and c['asked'] == 120 and c['placed'] == sum(r['paste']['placed'] for r in recs) and c['short'] == 4


def test_bad_options_and_inputs(toy, bank_dir, tmp_path):
    for kw, says in [(dict(k=-1), 'k=-1'), (dict(scale=(1.2, 0.8)), 'scale='), (dict(scale=0), 'scale='), (dict(gap=-1), 'gap=-1'),
                     (dict(sea_tolerance=0), 'sea_tolerance=0'), (dict(tries=0), 'tries=0'), (dict(feather=-2), 'feather=-2'),
                     (dict(looks=0), 'looks=0'), (dict(looks=-1), 'looks=-1'), (dict(looks=True), 'looks=True')]:
        with pytest.raises(SynthkitError, match=says.replace('(', r'\(')): PasteGenerator(bank_dir, **kw)
    with pytest.raises(SynthkitError, match="none were given"): PasteGenerator(bank_dir).generate(toy['img0'].read())
    with pytest.raises(SynthkitError, match='the image is uint16 but the crop bank holds uint8'):
        PasteGenerator(bank_dir).generate(np.zeros((40, 40), np.uint16), [], [])
    with pytest.raises(SynthkitError, match='margin=0'): CropBank.from_dataset(toy, margin=0)


def test_16_bit_and_three_channel_images(tmp_path):
    for kw in (dict(dtype=np.uint16), dict(channels=3)):
        ds = make_toy(tmp_path/str(kw), **kw)
        bank = CropBank.from_dataset(ds)
        it = ds['img4']
        o = paste_ships(it.read(), it.boxes, it.cls, bank, 1, k=2)
        assert o[0].dtype == it.read().dtype and o[0].shape == it.read().shape and o.info['paste']['placed'] == 2
        if kw.get('channels'): assert np.array_equal(o[0][..., 0], o[0][..., 2])   # grey stays grey


# --- reproducibility -------------------------------------------------------------------------------------------------

def test_regenerate_is_byte_exact(toy, bank_dir, tmp_path):
    g = load_generator(f'paste:{bank_dir}', k=3)
    synthesize(toy, g, 3, GenParams(seed=7), tmp_path/'out', batch_size=2, progress=False)
    recs = Manifest(tmp_path/'out').read()
    assert len(recs) == 18 and {r['part'] for r in recs} == {'train', 'val', 'test'}
    for r in recs:
        img, boxes, cls = regenerate(r, load_generator(f'paste:{bank_dir}', k=3), toy, labels=True)
        assert np.array_equal(img, read_image(tmp_path/'out'/r['path'])), r['path']
        assert np.allclose(boxes, r['boxes'], atol=1e-3) and cls.tolist() == r['cls']
    with pytest.raises(SynthkitError, match='pass dataset= to regenerate|none were given'): regenerate(recs[0], g)
    with pytest.raises(SynthkitError, match=r'options.k: 3 → 2'): regenerate(recs[0], load_generator(f'paste:{bank_dir}', k=2), toy)
    # the batch size decides nothing: one output at a time gives the same files
    synthesize(toy, g, 3, GenParams(seed=7), tmp_path/'one', batch_size=1, progress=False)
    one, out = _files(tmp_path/'one'), _files(tmp_path/'out')
    assert one.pop('manifest.jsonl') != out.pop('manifest.jsonl') and one == out   # records differ in batch_size and row only


def test_fresh_speckle_regenerates_byte_exact_and_keeps_the_layout(toy, bank_dir, tmp_path):
    "looks: the same layout and boxes as without it, other pixels; regenerate remakes them; another looks is refused."
    g = load_generator(f'paste:{bank_dir}', k=2, looks=8)
    synthesize(toy.subset(['img0', 'img1']), g, 2, GenParams(seed=3), tmp_path/'out', progress=False)
    plain = load_generator(f'paste:{bank_dir}', k=2)
    for r in Manifest(tmp_path/'out').read():
        img = read_image(tmp_path/'out'/r['path'])
        assert np.array_equal(regenerate(r, load_generator(f'paste:{bank_dir}', k=2, looks=8), toy), img)
        src = toy[r['source']]
        p = plain.generate_labelled(src.read(), src.boxes, src.cls, seeds=[r['seed']], source_id=src.id)[0]
        assert np.allclose(p[1], r['boxes'], atol=1e-3) and not np.array_equal(p[0], img) and r['paste']['looks'] == 8.0
    with pytest.raises(SynthkitError, match='options.looks: 8.0 → None'): regenerate(r, plain, toy)


def test_resume_with_another_bank_is_refused(toy, bank_dir, tmp_path):
    synthesize(toy, PasteGenerator(bank_dir, k=1), 1, GenParams(seed=0), tmp_path/'out', parts={'train': ['img0']}, progress=False)
    other = PasteGenerator(CropBank.from_dataset(toy, ['img1']), k=1)
    with pytest.raises(SynthkitError, match='made with other settings'):
        synthesize(toy, other, 1, GenParams(seed=0), tmp_path/'out', parts={'train': ['img0']}, progress=False)


def _files(out: Path) -> dict:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob('*')) if p.is_file() and p.name != 'data.yaml'}


def _data(toy, root: Path) -> Path:
    from synthkit.data.formats import export_yolo
    d = root/'data'
    if not d.exists():
        export_yolo(toy, d, {p: [i for i in toy.ids if toy[i].meta['split'] == p] for p in ('train', 'val', 'test')})
    return d


def _cmd(data, bank_dir, out):
    return [str(BIN/'synthkit'), 'generate', str(data), '--generator', f'paste:{bank_dir}', '--option', 'k=2', '--n', '5',
            '--seed', '3', '--out', str(out), '--quiet']


KILLER = textwrap.dedent('''
    import os, signal, sys
    import synthkit.synthesize as S
    n, mid = int(sys.argv[1]), sys.argv[2] == 'mid'
    real, calls = S.write_variation, [0]
    def write(*a, **kw):
        calls[0] += 1
        if calls[0] == n:
            if mid: real(*a, **{**kw, 'manifest': False})   # image and label written, the record not yet
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **kw)
    S.write_variation = write
    from synthkit.cli import main
    sys.argv = ['synthkit'] + sys.argv[3:]
    main()
''')


@pytest.mark.parametrize('n, where', [(7, 'mid'), (13, 'between')])
def test_kill_and_resume_gives_the_uninterrupted_files(toy, bank_dir, tmp_path_factory, tmp_path, n, where):
    root = tmp_path_factory.getbasetemp()/'paste-cli'
    root.mkdir(exist_ok=True)
    data, ref = _data(toy, root), root/'ref'
    if not ref.exists():
        r = subprocess.run(_cmd(data, bank_dir, ref), capture_output=True, text=True, env=ENV)
        assert r.returncode == 0, r.stderr
        assert '30 written' in r.stdout
    out = tmp_path/'killed'
    p = subprocess.run([sys.executable, '-c', KILLER, str(n), where] + _cmd(data, bank_dir, out)[1:], capture_output=True, text=True, env=ENV)
    assert p.returncode == -signal.SIGKILL, p.stderr
    before = len(Manifest(out).read())
    assert before == n - 1 and len(list((out/'images').rglob('*.png'))) == n - (where != 'mid')
    r = subprocess.run(_cmd(data, bank_dir, out), capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    assert f'{30 - before} written' in r.stdout and f'{before} already there' in r.stdout
    assert _files(out) == _files(ref)   # images, labels and manifest byte for byte
    assert all('paste' in rec for rec in Manifest(out).read())


# --- the manifest hook -----------------------------------------------------------------------------------------------

def test_output_info_goes_into_the_record_and_may_not_overwrite_a_field(toy, tmp_path):
    class Tagged(Generator):
        name, knobs, min_size, batch_invariant = 'tagged', frozenset({'seed'}), 1, True
        def __init__(self, key='note'): self.key = key
        def generate_labelled(self, image, boxes=None, cls=None, *, n=1, params=GenParams(), seeds=None, source_id='image', batch_size=None):
            return [Labelled(np.asarray(image).copy(), np.asarray(boxes, np.float32), np.asarray(cls), {self.key: int(s) % 7}) for s in seeds]
    synthesize(toy, Tagged(), 2, GenParams(seed=1), tmp_path/'a', parts={'train': ['img0']}, progress=False)
    recs = Manifest(tmp_path/'a').read()
    assert [r['note'] for r in recs] == [derive_seed(1, 'img0', k) % 7 for k in range(2)]
    for key in ('seed', 'boxes', 'generator'):
        with pytest.raises(SynthkitError, match=f"attached '{key}' to an output, a field every manifest record has"):
            synthesize(toy, Tagged(key), 1, GenParams(seed=1), tmp_path/key, parts={'train': ['img0']}, progress=False)
    import pickle
    o = pickle.loads(pickle.dumps(Labelled(np.zeros(2), np.zeros((0, 4)), np.zeros(0), {'a': 1})))
    assert isinstance(o, Labelled) and o.info == {'a': 1} and len(o) == 3


# --- ddpm-paste: the pasted windows harmonized -----------------------------------------------------------------------

from synthkit.harmonized import HarmonizedPasteGenerator, harmonize_seed, windows_mask

HP = GenParams(strength=0.5, steps=4, seed=3)
TINY_DDPM = dict(crop=32, channels=(16, 32), layers_per_block=1, norm_groups=8, batch=2, steps=1, minutes=None)


@pytest.fixture(scope='module')
def ddpm_dir(toy, tmp_path_factory):
    from synthkit.ddpm import DDPMConfig
    from synthkit.ddpm_train import train_ddpm
    return train_ddpm(toy, tmp_path_factory.mktemp('ddpm')/'ddpm', DDPMConfig(**TINY_DDPM), progress=False)


@pytest.fixture(scope='module')
def hgen(bank_dir, ddpm_dir):
    return load_generator(f'ddpm-paste:{bank_dir}', harmonizer=f'ddpm:{ddpm_dir}', k=2)


class Blur(Generator):
    "A toy img2img generator without a per-step hook: every pixel pulled towards the image mean by `strength`."
    name, knobs, min_size, img2img_steps = 'blur', frozenset({'strength', 'steps', 'seed'}), 1, True
    def __init__(self, sigma: float = 0.1): self.sigma = sigma
    def _run(self, x, boxes, cls, params, seeds):
        return [np.clip((1 - params.strength) * x + params.strength * x.mean()
                        + np.random.default_rng(s).normal(0, self.sigma, x.shape), 0, 1) for s in seeds]


def test_windows_mask():
    m = windows_mask((20, 30), [[5, 4, 12, 9], [20, 10, 26, 18]], pad=3)
    assert m.dtype == np.float32 and (m[4:9, 5:12] == 1).all() and (m[10:18, 20:26] == 1).all()
    assert m[:, :2].max() == 0 and m[0].max() == 0 and m[:, 15:17].max() == 0     # 0 beyond `pad` px
    assert 0 < m[3, 8] < 1 and 0 < m[6, 14] < m[6, 13] < m[6, 12] < m[6, 11] == 1 and m[6, 15] == 0
    assert windows_mask((20, 30), [[5, 4, 12, 9]], pad=0).sum() == 35
    assert (windows_mask((20, 30), [[-2, -2, 3, 3]], pad=2)[:3, :3] == 1).all()   # clipped at the border, not squeezed


def test_same_layout_and_boxes_as_paste_only_the_windows_change(toy, bank_dir, hgen):
    plain = PasteGenerator(bank_dir, k=2)
    n = 0
    for it in toy:
        kw = dict(n=3, params=HP, source_id=it.id)
        hs, ps = hgen.generate_labelled(it.read(), it.boxes, it.cls, **kw), plain.generate_labelled(it.read(), it.boxes, it.cls, **kw)
        for h, p in zip(hs, ps):
            assert np.array_equal(h[1], p[1]) and np.array_equal(h[2], p[2]) and h.info['paste'] == p.info['paste']   # a paired comparison
            assert h[0].dtype == p[0].dtype and h[0].shape == p[0].shape
            mk = windows_mask(it.read().shape, p.info['paste']['windows'], hgen.pad)
            assert np.array_equal(h[0][mk == 0], it.read()[mk == 0])   # outside the windows: the source, byte for byte
            if p.info['paste']['placed']:
                assert (h[0][mk == 1] != p[0][mk == 1]).mean() > 0.3; n += 1   # inside: re-synthesized
            else: assert np.array_equal(h[0], it.read())
            hi = h.info['harmonized']
            assert hi == dict(strength=0.5, steps=4, denoising_steps=2, windows=p.info['paste']['placed'], pad=4,
                              pixels=int((mk > 0).sum()), seed=hi['seed'])
    assert n >= 12
    it = toy['img2']
    a = hgen.generate_labelled(it.read(), it.boxes, it.cls, n=3, params=HP, source_id=it.id)
    b = hgen.generate_labelled(it.read(), it.boxes, it.cls, n=3, params=HP.replace(strength=0.75, steps=8), source_id=it.id)
    assert all(np.array_equal(u[1], v[1]) and u.info['paste'] == v.info['paste'] and not np.array_equal(u[0], v[0]) for u, v in zip(a, b))
    assert [u.info['harmonized']['seed'] for u in a] == [harmonize_seed(derive_seed(3, it.id, k)) for k in range(3)]


def test_a_batch_is_what_masked_generate_makes_per_output(toy, bank_dir, ddpm_dir, hgen):
    """The DDPM path batches the outputs of a call; one at a time it is exactly masked_generate (the DDPM's masked SDEdit,
    the same computation), and a batch of three is the same up to float rounding (other kernels)."""
    from synthkit.sdedit import DDPMGenerator
    from synthkit.masks import masked_generate
    it, d = toy['img3'], DDPMGenerator(ddpm_dir)
    seeds = [derive_seed(3, it.id, k) for k in range(3)]
    one = [hgen.generate_labelled(it.read(), it.boxes, it.cls, params=HP, seeds=[s], batch_size=1)[0] for s in seeds]
    for o, s in zip(one, seeds):
        p = paste_ships(it.read(), it.boxes, it.cls, hgen.bank, s, k=2)
        ref = masked_generate(d, p[0], windows_mask(p[0].shape, p.info['paste']['windows'], 4), HP, [harmonize_seed(s)])[0]
        assert np.array_equal(o[0], ref)
    # A batch of three runs other kernels than three batches of one: oneDNN / MKL pick blockings and reduction orders by
    # batch size, threads and CPU, so the bytes may differ (the recipe holds the batch size). In float32 the values before
    # rounding move by ~2e-4 grey levels (batch 1/2/3/6, 1 or 2 threads, NCHW, oneDNN off): a pixel can only cross a
    # rounding boundary, by one grey level, and rarely. The layout and the boxes are the paste's (numpy): exact.
    f32 = load_generator(f'ddpm-paste:{bank_dir}', harmonizer=f'ddpm:{ddpm_dir}', k=2, dtype='fp32')
    one = [f32.generate_labelled(it.read(), it.boxes, it.cls, params=HP, seeds=[s], batch_size=1)[0] for s in seeds]
    three = f32.generate_labelled(it.read(), it.boxes, it.cls, n=3, params=HP, seeds=seeds, batch_size=3)
    assert all(u.info == v.info and np.array_equal(u[1], v[1]) for u, v in zip(one, three))
    dd = np.stack([np.abs(u[0].astype(int) - v[0]) for u, v in zip(one, three)])
    assert dd.max() <= 1 and dd.mean() <= 0.01, (dd.max(), dd.mean())   # ≤ 1 grey level, on at most 1 % of the pixels
    assert hgen.batch_size == d.batch_size and not hgen.batch_invariant and Recipe.of(hgen, HP, 3).batch_size == 3


def test_any_img2img_generator_harmonizes_after_the_fact(toy, bank_dir):
    g = HarmonizedPasteGenerator(bank_dir, Blur(), k=2)
    assert g.batch_invariant and Recipe.of(g, HP, 7).batch_size is None and g.knobs == {'seed', 'strength', 'steps'}
    it = toy['img1']
    outs = g.generate_labelled(it.read(), it.boxes, it.cls, n=3, params=HP, source_id=it.id)
    for o in outs:
        mk = windows_mask(o[0].shape, o.info['paste']['windows'], 4)
        assert np.array_equal(o[0][mk == 0], it.read()[mk == 0]) and (o[0][mk == 1] != it.read()[mk == 1]).any()
    again = g.generate_labelled(it.read(), it.boxes, it.cls, n=3, params=HP, source_id=it.id, batch_size=1)
    assert all(np.array_equal(u[0], v[0]) for u, v in zip(outs, again))


def test_recipe_holds_the_bank_and_the_harmonizer(toy, bank_dir, ddpm_dir, hgen, tmp_path):
    import shutil
    from synthkit.sdedit import DDPMGenerator
    from synthkit.generators import weight_files
    d = DDPMGenerator(ddpm_dir)
    r = Recipe.of(hgen, HP)
    assert r.generator == 'ddpm-paste' and r.model == f'weights:{hgen.weights_hash}' and r.params == dict(seed=3, strength=0.5, steps=4)
    assert r.options['harmonizer'] == dict(generator='ddpm', version=d.version, model=f'weights:{d.weights_hash}',
                                           options=Recipe.of(d).options, dtype=d.describe()['dtype'])
    assert r.dtype == d.describe()['dtype'] and r.device == 'cpu' and r.batch_size == d.batch_size
    assert {k: r.options[k] for k in ('k', 'pad', 'gap')} == dict(k=2, pad=4, gap=2.0)
    assert hgen.bank_hash == CropBank.load(bank_dir).content_hash() and hgen.weights_hash not in (hgen.bank_hash, d.weights_hash)
    assert str(bank_dir) in hgen.model_id and str(ddpm_dir) in hgen.model_id
    # the same generator from an instance: the same recipe; another bank, other DDPM weights, other options: another key
    assert Recipe.of(HarmonizedPasteGenerator(bank_dir, d, k=2), HP).key() == r.key()
    other_bank = PasteGenerator(CropBank.from_dataset(toy, ['img0', 'img1'])).bank
    assert Recipe.of(HarmonizedPasteGenerator(other_bank, d, k=2), HP).key() != r.key()
    other = shutil.copytree(ddpm_dir, tmp_path/'ddpm2')
    for f in weight_files(other): f.write_bytes(f.read_bytes()[:-8] + b'\0' * 8)
    g2 = load_generator(f'ddpm-paste:{bank_dir}', harmonizer=f'ddpm:{other}', k=2)
    assert g2.weights_hash != hgen.weights_hash and Recipe.of(g2, HP).key() != r.key()
    moved = shutil.copytree(ddpm_dir, tmp_path/'moved')   # the same weights elsewhere: the same recipe
    assert Recipe.of(load_generator(f'ddpm-paste:{bank_dir}', harmonizer=f'ddpm:{moved}', k=2), HP).key() == r.key()
    for kw in (dict(pad=2), dict(harmonizer_options=dict(eta=1.0)), dict(harmonizer_options=dict(solver='ddim')), dict(k=3)):
        assert Recipe.of(load_generator(f'ddpm-paste:{bank_dir}', harmonizer=f'ddpm:{ddpm_dir}', **{'k': 2, **kw}), HP).key() != r.key(), kw
    for q in (HP.replace(strength=0.75), HP.replace(steps=6), HP.replace(seed=4)): assert Recipe.of(hgen, q).key() != r.key()
    assert Recipe.of(hgen, HP.replace(guidance=2.0, prompt='x')).key() == r.key()
    fp32 = load_generator(f'ddpm-paste:{bank_dir}', harmonizer=f'ddpm:{ddpm_dir}', k=2, dtype='fp32')
    assert fp32.harmonizer.describe()['dtype'] == 'float32' == Recipe.of(fp32, HP).dtype
    planned = Recipe.planned(f'ddpm-paste:{bank_dir}', dict(harmonizer=f'ddpm:{ddpm_dir}', k=2), HP)
    assert planned.model == f'spec:{bank_dir}@{hgen.bank_hash}' and planned.options['harmonizer'] == f'ddpm:{ddpm_dir}'
    assert planned.params == r.params and planned.key() != Recipe.planned(f'ddpm-paste:{bank_dir}', dict(harmonizer=f'ddpm:{other}', k=2), HP).key()


def test_harmonized_regenerate_is_byte_exact_and_resume_checks_the_harmonizer(toy, bank_dir, ddpm_dir, hgen, tmp_path):
    s = synthesize(toy, hgen, 3, HP, tmp_path/'out', parts={'train': ['img0', 'img1', 'img2']}, batch_size=2, progress=False)
    recs = Manifest(tmp_path/'out').read()
    assert s.written == 9 and s.unet_evals > 0
    for r in recs:
        assert r['harmonized']['strength'] == 0.5 and r['paste']['placed'] == len(r['boxes']) - toy[r['source']].n_boxes
        assert r['harmonizer']['model'] == hgen.options()['harmonizer']['model'] and r['batch_size'] in (1, 2)
        img, boxes, cls = regenerate(r, load_generator(f'ddpm-paste:{bank_dir}', harmonizer=f'ddpm:{ddpm_dir}', k=2), toy, labels=True)
        assert np.array_equal(img, read_image(tmp_path/'out'/r['path'])), r['path']
        assert np.allclose(boxes, r['boxes'], atol=1e-3) and cls.tolist() == r['cls']
    with pytest.raises(SynthkitError, match=r'options.pad: 4 → 2'):
        regenerate(recs[0], load_generator(f'ddpm-paste:{bank_dir}', harmonizer=f'ddpm:{ddpm_dir}', k=2, pad=2), toy)
    with pytest.raises(SynthkitError, match='made with other settings'):
        synthesize(toy, load_generator(f'ddpm-paste:{bank_dir}', harmonizer=f'ddpm:{ddpm_dir}', k=2, harmonizer_options=dict(eta=1.0)),
                   3, HP, tmp_path/'out', parts={'train': ['img0', 'img1', 'img2']}, batch_size=2, progress=False)
    with pytest.raises(SynthkitError, match='computed 2 per model call'):
        synthesize(toy, hgen, 3, HP, tmp_path/'out', parts={'train': ['img0', 'img1', 'img2']}, batch_size=3, progress=False)
    assert synthesize(toy, hgen, 3, HP, tmp_path/'out', parts={'train': ['img0', 'img1', 'img2']}, batch_size=2, progress=False).skipped == 9


def test_harmonized_bad_input(toy, bank_dir, ddpm_dir, hgen):
    from synthkit.sdedit import DDPMGenerator
    with pytest.raises(SynthkitError, match="needs a harmonizer.*harmonizer='ddpm:FOLDER'"): load_generator(f'ddpm-paste:{bank_dir}', k=2)
    with pytest.raises(SynthkitError, match='the paste generator cannot harmonize .*no img2img path'):
        load_generator(f'ddpm-paste:{bank_dir}', harmonizer=f'paste:{bank_dir}')
    with pytest.raises(SynthkitError, match='the classic generator cannot harmonize'): HarmonizedPasteGenerator(bank_dir, 'classic')
    with pytest.raises(SynthkitError, match=r'harmonizer=3 is not a generator spec'): HarmonizedPasteGenerator(bank_dir, 3)
    with pytest.raises(SynthkitError, match='would not reach it'): HarmonizedPasteGenerator(bank_dir, DDPMGenerator(ddpm_dir), dtype='fp32')
    with pytest.raises(SynthkitError, match='dtype is given both'):
        HarmonizedPasteGenerator(bank_dir, f'ddpm:{ddpm_dir}', dtype='fp32', harmonizer_options=dict(dtype='bf16'))
    with pytest.raises(SynthkitError, match='pad=-1 must be an integer'): HarmonizedPasteGenerator(bank_dir, f'ddpm:{ddpm_dir}', pad=-1)
    with pytest.raises(SynthkitError, match='k=-1'): HarmonizedPasteGenerator(bank_dir, f'ddpm:{ddpm_dir}', k=-1)
    with pytest.raises(SynthkitError, match='does not exist'): HarmonizedPasteGenerator(bank_dir, 'ddpm:/no/such/folder')
    it = toy['img0']
    with pytest.raises(SynthkitError, match='runs 0 denoising steps'):
        hgen.generate_labelled(it.read(), it.boxes, it.cls, params=GenParams(strength=0.1, steps=5))
    with pytest.raises(SynthkitError, match='none were given'): hgen.generate(it.read(), params=HP)
    with pytest.raises(SynthkitError, match='smaller than the 16 px'): hgen.generate(np.zeros((8, 8), np.uint8), [], [], params=HP)


def test_kill_and_resume_ddpm_paste(toy, bank_dir, ddpm_dir, tmp_path_factory, tmp_path):
    root = tmp_path_factory.getbasetemp()/'paste-cli'
    root.mkdir(exist_ok=True)
    data = _data(toy, root)
    cmd = lambda out: ([str(BIN/'synthkit'), 'generate', str(data), '--generator', f'ddpm-paste:{bank_dir}', '--option', 'k=2',
                        '--option', f'harmonizer=ddpm:{ddpm_dir}', '--n', '2', '--strength', '0.5', '--steps', '4', '--seed', '3',
                        '--out', str(out), '--quiet'])
    ref = tmp_path/'ref'
    r = subprocess.run(cmd(ref), capture_output=True, text=True, env=ENV)
    assert r.returncode == 0 and '12 written' in r.stdout, r.stderr
    out = tmp_path/'killed'
    p = subprocess.run([sys.executable, '-c', KILLER, '5', 'mid'] + cmd(out)[1:], capture_output=True, text=True, env=ENV)
    assert p.returncode == -signal.SIGKILL, p.stderr
    r = subprocess.run(cmd(out), capture_output=True, text=True, env=ENV)
    assert r.returncode == 0 and '8 written' in r.stdout and '4 already there' in r.stdout, r.stderr + r.stdout
    assert _files(out) == _files(ref)
    assert all('harmonized' in rec and 'paste' in rec for rec in Manifest(out).read())
