"""Bad input and faults (issue 12): a catalogue of what a hostile new user tries on the CLI, with tiny data.

Every refusal must be: exit status 2, exactly one line on stderr (`synthkit CMD: error: ...`) with no traceback, and
nothing written or lost anywhere in the test's world (every file's sha256 and every folder compared before and after).
Cases marked `held` were already handled before the issue and stay here for coverage; every other case failed then.
The commands run in-process (`synthkit.cli.main`), so the catalogue costs what the work costs, not Python start-ups.
"""
import contextlib, hashlib, json, os, shutil, stat, tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from synthkit.cli import main
from synthkit.ddpm import DDPMConfig, CONFIG_FILE, STATE_FILE, STATE_JSON, OLD_STATE_FILE
from synthkit.ddpm_train import train_ddpm
from synthkit.testing import speckle_toy
from synthkit.data.formats import export_yolo, load_dataset
from synthkit.images import save_image
from synthkit.synthesize import Manifest

TINY = dict(crop=32, channels=(16, 32), layers_per_block=1, norm_groups=8, batch=2)
ROOT = os.geteuid() == 0


@pytest.fixture(scope='module')
def world():
    "Everything the cases read: a YOLO dataset (4 train, 1 val, 1 test), a tiny DDPM, its variations, broken copies."
    w = Path(tempfile.mkdtemp(prefix='synthkit-faults-'))
    w.chmod(0o755)   # readable by the unprivileged user the read-only cases switch to when the tests run as root
    toy = speckle_toy(w/'raw', n=6, size=48, splits=['train'] * 4 + ['val', 'test'])
    export_yolo(toy, w/'data', {'train': toy.ids[:4], 'val': toy.ids[4:5], 'test': toy.ids[5:]})
    model = train_ddpm(toy, w/'model', DDPMConfig(**TINY, steps=2, minutes=None), progress=False)
    # a model folder as the CLI's defaults at --crop 32 would build it, so `train-ddpm --crop 32` resumes it
    cli_model = DDPMConfig(crop=32).model_dict()
    for name in ('untrained', 'pickled', 'damaged'):
        shutil.copytree(model, w/name)
        meta = json.loads((w/name/CONFIG_FILE).read_text())
        (w/name/CONFIG_FILE).write_text(json.dumps({**meta, 'model': cli_model} if name != 'untrained' else {**meta, 'step': 0}))
    for name in ('pickled', 'damaged'):
        for f in (STATE_FILE, STATE_JSON): (w/name/f).unlink(missing_ok=True)
    torch.save({'opt': _Payload(w/'RAN'), 'step': 2}, w/'pickled'/OLD_STATE_FILE)
    (w/'damaged'/OLD_STATE_FILE).write_bytes(b'PK\x03\x04 this is not a checkpoint')
    assert main(['generate', str(w/'data'), '--generator', f'ddpm:{model}', '--n', '1', '--strength', '0.5', '--steps', '4',
                 '--out', str(w/'var'), '--quiet']) == 0
    (w/'mixed').mkdir()   # train: the variations of the test image
    (w/'mixed'/'data.yaml').write_text(f'path: {w/"var"}\ntrain: images/test\nval: images/val\nnames: [ship]\n')
    (w/'mixed2').mkdir()  # val: the variations of the training images
    (w/'mixed2'/'data.yaml').write_text(f'path: {w/"var"}\ntrain: images/val\nval: images/train\nnames: [ship]\n')
    shutil.copytree(w/'data', w/'copy')   # its data.yaml still says path: <w>/data
    (w/'afile.txt').write_text('not a folder\n')
    (w/'ro').mkdir(); (w/'ro').chmod(0o555)
    save_image(np.zeros((8, 8), np.uint8), w/'junk.png')
    (w/'text.pt').write_text('not weights\n')
    torch.save({'w': torch.zeros(3)}, w/'tensors.pt')
    torch.save({'model': _Payload(w/'RAN')}, w/'payload.pt')
    (w/'cases').mkdir()
    yield w
    (w/'ro').chmod(0o755)
    shutil.rmtree(w, ignore_errors=True)


class _Payload:
    "A pickle that would create a marker file when unpickled."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (os.system, (f'touch {self.marker}',))


def snapshot(w: Path) -> dict:
    "Every file's sha256 and mode, and every folder, under `w`."
    snap = {}
    for p in sorted(w.rglob('*')):
        rel = p.relative_to(w).as_posix()
        if p.is_dir(): snap[rel] = 'dir'
        else: snap[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), stat.S_IMODE(p.stat().st_mode))
    return snap


def run(argv, capsys):
    "`synthkit ARGV` in this process: (exit status, stdout, stderr)."
    capsys.readouterr()
    try: rc = main([str(a) for a in argv])
    except SystemExit as e: rc = e.code
    c = capsys.readouterr()
    return rc, c.out, c.err


@contextlib.contextmanager
def unprivileged():
    "Run the block as user `nobody` where the tests run as root (root writes into any folder, whatever its modes)."
    if not ROOT: yield; return
    os.seteuid(65534)
    try: yield
    finally: os.seteuid(0)


# ---------------------------------------------------------------- case builders (each returns extra files under w/cases/<id>)
def coco(w: Path, cid: str, images=None, annotations=None, categories=None) -> Path:
    d = w/'cases'/cid
    for n in ('a.png', 'b.png'): save_image(np.full((40, 64), 60, np.uint8), d/'images'/n)
    js = dict(images=[dict(id=1, file_name='a.png', width=64, height=40), dict(id=2, file_name='b.png', width=64, height=40)],
              annotations=[dict(id=1, image_id=1, category_id=1, bbox=[2, 3, 10, 8])], categories=[dict(id=1, name='ship')])
    for k, v in (('images', images), ('annotations', annotations), ('categories', categories)):
        if v is not None: js[k] = v
    (d/'train.json').write_text(json.dumps(js))
    return d/'train.json'


def ann(**kw): return [dict(dict(id=1, image_id=1, category_id=1, bbox=[2, 3, 10, 8]), **kw)]


def small_image_data(w: Path, cid: str, side: int) -> Path:
    d = w/'cases'/cid
    shutil.copytree(w/'data', d)
    (d/'data.yaml').write_text((d/'data.yaml').read_text().replace(str(w/'data'), str(d)))
    save_image(np.zeros((side, side), np.uint8), d/'images'/'train'/'tiny.png'); (d/'labels'/'train'/'tiny.txt').write_text('')
    return d


def voc_named_images(w: Path, cid: str) -> Path:
    "A Pascal VOC folder called images/ inside <cases>/<cid>: convert ... --out <cases>/<cid> would write over it."
    d = w/'cases'/cid/'images'
    save_image(np.zeros((40, 64), np.uint8), d/'JPEGImages'/'a.png')
    (d/'Annotations').mkdir()
    (d/'Annotations'/'a.xml').write_text('<annotation><filename>a.png</filename><size><width>64</width><height>40</height></size>'
                                         '<object><name>ship</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax>'
                                         '</bndbox></object></annotation>')
    return d


def crop_bank(w: Path, cid: str, damage=None) -> Path:
    "A crop bank of the dataset's training images under <cases>/<cid>/bank; `damage(bank.json text)` → what bank.json holds then (None: no bank.json)."
    from synthkit.paste import BANK_FILE, CropBank
    d = CropBank.from_dataset(load_dataset(w/'data'), margin=2).save(w/'cases'/cid/'bank')
    if damage is not None:
        text = damage((d/BANK_FILE).read_text())
        if text is None: (d/BANK_FILE).unlink()
        else: (d/BANK_FILE).write_text(text)
    return d


def record_without(key):
    "A `damage` for `crop_bank`: bank.json less `key`."
    return lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != key})


@dataclass
class Case:
    id: str
    argv: object          # a function (w, cid) -> argv
    msg: str              # a piece of the one error line
    held: bool = False    # already handled before issue 12 (kept for coverage)
    as_nobody: bool = False
    gpu: bool = False     # needs a machine without CUDA (the case is about a GPU that isn't there)


def gen(*extra, data='data'):
    return lambda w, cid: ['generate', w/data if isinstance(data, str) else data(w, cid), '--generator', f'ddpm:{w/"model"}', '--n', '1',
                           '--strength', '0.5', '--steps', '4', '--quiet', *[(e(w, cid) if callable(e) else e) for e in extra]]

def out(name='o'): return lambda w, cid: w/'out'/cid/name
def path(*parts): return lambda w, cid: w.joinpath(*parts)
def ddpm(*extra, data='data'):
    return lambda w, cid: ['train-ddpm', w/data, '--crop', '32', '--batch', '2', '--quiet', *[(e(w, cid) if callable(e) else e) for e in extra]]
def convert(src, *extra):
    return lambda w, cid: ['convert', src(w, cid), *[(e(w, cid) if callable(e) else e) for e in extra]]


def paste(*extra, damage=None, name='paste'):
    "`generate DATA --generator NAME:<the case's crop bank> --parts train ...`; `<bank>` in `extra` is that bank's folder."
    def argv(w, cid):
        b = crop_bank(w, cid, damage)
        return ['generate', w/'data', '--generator', f'{name}:{b}', '--n', '1', '--parts', 'train', '--quiet',
                *[(b if e == '<bank>' else e(w, cid) if callable(e) else e) for e in extra]]
    return argv


CASES = [
    # ---- the output guard: generate
    Case('gen-out-is-data', gen('--out', path('data')), '--out is the input folder'),
    Case('gen-out-in-images', gen('--out', path('data', 'images', 'train', 'gen')), '--out is inside the input folder'),
    Case('gen-out-in-data', gen('--out', path('data', 'gen')), '--out is inside the input folder'),
    Case('gen-yaml-out-is-data', gen('--out', path('data'), data=lambda w, c: w/'data'/'data.yaml'), '--out is the input folder'),
    Case('gen-out-is-labels', gen('--out', path('data', 'labels')), '--out is inside the input folder'),
    Case('gen-out-is-file', gen('--out', path('afile.txt')), '--out is a file, not a folder'),
    Case('gen-out-under-file', gen('--out', path('afile.txt', 'sub')), 'afile.txt is a file'),
    Case('gen-out-read-only', gen('--out', path('ro', 'o')), 'cannot write in', as_nobody=True),
    Case('gen-out-is-variations-input', gen('--out', path('var'), data='mixed'), 'is the input folder'),
    # ---- the output guard: convert
    Case('convert-out-is-src', convert(path('data'), '--out', path('data')), '--out is the input folder'),
    Case('convert-out-in-src', convert(path('data'), '--out', path('data', 'images', 'x')), '--out is inside the input folder'),
    Case('convert-yaml-out-is-src', convert(path('data', 'data.yaml'), '--out', path('data')), '--out is the input folder'),
    Case('convert-out-is-file', convert(path('data'), '--out', path('afile.txt')), '--out is a file, not a folder'),
    Case('convert-out-read-only', convert(path('data'), '--out', path('ro', 'o')), 'cannot write in', as_nobody=True),
    Case('convert-out-read-only-itself', convert(path('data'), '--out', path('ro')), 'cannot write in', as_nobody=True),
    Case('convert-src-where-out-writes', lambda w, c: ['convert', voc_named_images(w, c), '--out', w/'cases'/c],
         'where this command writes images: it would overwrite its own input'),
    Case('convert-coco-out-is-src', lambda w, c: ['convert', coco(w, c), '--out', w/'cases'/c], '--out is the input folder'),
    # ---- the output guard: train-ddpm, simulate
    Case('ddpm-out-is-data', ddpm('--steps', '1', '--out', path('data')), '--out is the input folder'),
    Case('ddpm-out-in-data', ddpm('--steps', '1', '--out', path('data', 'models', 'm')), '--out is inside the input folder'),
    Case('ddpm-out-is-file', ddpm('--steps', '1', '--out', path('afile.txt')), '--out is a file, not a folder'),
    Case('ddpm-out-read-only', ddpm('--steps', '1', '--out', path('ro', 'm')), 'cannot write in', as_nobody=True),
    Case('simulate-out-is-file', lambda w, c: ['simulate', '--out', w/'afile.txt', '--n', '2', '--quiet'], '--out is a file, not a folder'),
    Case('simulate-out-read-only', lambda w, c: ['simulate', '--out', w/'ro'/'s', '--n', '2', '--quiet'], 'cannot write in', as_nobody=True),
    # ---- a copied dataset whose data.yaml names the original
    Case('gen-copied-yaml', gen('--out', out(), data='copy'), 'looks like a copied dataset'),
    Case('convert-copied-yaml', convert(path('copy'), '--out', out()), 'looks like a copied dataset'),
    Case('ddpm-copied-yaml', ddpm('--steps', '1', '--out', out(), data='copy'), 'looks like a copied dataset'),
    # ---- the lineage guard: every part, and through manifests
    Case('gen-test-into-val', gen('--parts', 'test', '--into', 'val', '--out', out()), "into='val' would put"),
    Case('gen-train-into-test', gen('--parts', 'train', '--into', 'test', '--out', out()), "into='test' would put"),
    Case('gen-val-into-test', gen('--parts', 'val', '--into', 'test', '--out', out()), "into='test' would put"),
    Case('gen-all-into-val', gen('--into', 'val', '--out', out()), 'lineage guard'),
    Case('gen-val-into-train', gen('--parts', 'val', '--into', 'train', '--out', out()), 'lineage guard: 1 sources are not', held=True),
    Case('gen-train-is-test-variations', gen('--out', out(), data='mixed'), "made from a 'test' image"),
    Case('gen-val-is-train-variations', gen('--parts', 'val', '--out', out(), data='mixed2'), "made from a 'train' image"),
    Case('ddpm-train-is-test-variations', ddpm('--steps', '1', '--out', out(), data='mixed'), "made from a 'test' image"),
    # ---- strength x steps with no denoising step
    Case('gen-strength-0.2-steps-4', gen('--strength', '0.2', '--steps', '4', '--out', out()), 'runs 0 denoising steps — use steps ≥ 5 for this strength, or strength ≥ 0.25 with steps=4'),
    Case('gen-strength-1e-9', gen('--strength', '1e-9', '--steps', '25', '--out', out()), 'or strength ≥ 0.04 with steps=25'),
    Case('gen-strength-0.1-steps-9', gen('--strength', '0.1', '--steps', '9', '--out', out()), 'use steps ≥ 10 for this strength, or strength ≥ 0.1112 with steps=9'),
    Case('gen-strength-0.03', gen('--strength', '0.03', '--steps', '25', '--out', out()), 'runs 0 denoising steps'),
    Case('gen-strength-0', gen('--strength', '0', '--out', out()), 'strength=0.0 is outside (0, 1]', held=True),
    Case('gen-strength-1.5', gen('--strength', '1.5', '--out', out()), 'strength=1.5 is outside (0, 1]', held=True),
    Case('gen-steps-0', gen('--steps', '0', '--out', out()), 'steps=0 must be an integer ≥ 1', held=True),
    # ---- COCO
    Case('coco-duplicate-image-id', convert(lambda w, c: coco(w, c, images=[dict(id=1, file_name='a.png'), dict(id=1, file_name='b.png')]),
                                            '--out', out()), "image id 1 is used by both a.png and b.png"),
    Case('coco-bbox-2-numbers', convert(lambda w, c: coco(w, c, annotations=ann(bbox=[2, 3])), '--out', out()), 'bbox [2, 3] is not 4 numbers'),
    Case('coco-bbox-5-numbers', convert(lambda w, c: coco(w, c, annotations=ann(bbox=[2, 3, 4, 5, 6])), '--out', out()), 'is not 4 numbers'),
    Case('coco-bbox-text', convert(lambda w, c: coco(w, c, annotations=ann(bbox=['2', 'x', 10, 8])), '--out', out()), "bbox ['2', 'x', 10, 8]"),
    Case('coco-bbox-missing', convert(lambda w, c: coco(w, c, annotations=[dict(id=1, image_id=1, category_id=1)]), '--out', out()),
         'bbox None is not 4 numbers'),
    Case('coco-bbox-bool', convert(lambda w, c: coco(w, c, annotations=ann(bbox=[True, 3, 10, 8])), '--out', out()), 'is not 4 numbers'),
    Case('coco-no-category-id', convert(lambda w, c: coco(w, c, annotations=[dict(id=1, image_id=1, bbox=[2, 3, 10, 8])]), '--out', out()),
         'annotation 1 has no category_id'),
    Case('coco-category-no-name', convert(lambda w, c: coco(w, c, categories=[dict(id=1)]), '--out', out()), 'has no name'),
    Case('coco-category-empty-name', convert(lambda w, c: coco(w, c, categories=[dict(id=1, name=' ')]), '--out', out()), 'has no name'),
    Case('coco-duplicate-category-id', convert(lambda w, c: coco(w, c, categories=[dict(id=1, name='ship'), dict(id=1, name='boat')]),
                                               '--out', out()), 'category id 1 is used twice'),
    Case('coco-image-no-file-name', convert(lambda w, c: coco(w, c, images=[dict(id=1)]), '--out', out()), 'has no id or file_name'),
    Case('coco-duplicate-id-generate', gen('--out', out(), data=lambda w, c: coco(w, c, images=[dict(id=1, file_name='a.png'),
                                                                                             dict(id=1, file_name='b.png')])), 'is used by both'),
    Case('coco-not-json', convert(lambda w, c: (w/'cases'/c).mkdir(parents=True) or (w/'cases'/c/'x.json').write_text('{') and w/'cases'/c/'x.json',
                                  '--out', out()), 'not valid json', held=True),
    # ---- train-ddpm
    Case('ddpm-steps-0', ddpm('--steps', '0', '--out', out()), 'steps=0 must be None or an integer ≥ 1'),
    Case('ddpm-steps-negative', ddpm('--steps', '-3', '--out', out()), 'steps=-3 must be None or an integer ≥ 1'),
    Case('ddpm-device-cuda', ddpm('--steps', '1', '--device', 'cuda', '--out', out()), 'torch sees no CUDA GPU', gpu=True),
    Case('ddpm-device-cuda-7', ddpm('--steps', '1', '--device', 'cuda:7', '--out', out()), "device='cuda:7'"),
    Case('ddpm-device-nonsense', ddpm('--steps', '1', '--device', 'gpu', '--out', out()), "device='gpu' is not a torch device", held=True),
    Case('ddpm-crafted-pickle', ddpm('--steps', '3', '--out', path('pickled')), "is not tensors only (Weights only load failed"),
    Case('ddpm-damaged-pickle', ddpm('--steps', '3', '--out', path('damaged')), 'it was not loaded'),
    Case('ddpm-no-resume-bad-device', ddpm('--steps', '3', '--no-resume', '--device', 'cuda:7', '--out', path('damaged')), "device='cuda:7'"),
    Case('ddpm-crop-30', ddpm('--steps', '1', '--crop', '30', '--out', out()), 'crop=30', held=True),
    Case('ddpm-dtype-int8', ddpm('--steps', '1', '--dtype', 'int8', '--out', out()), "dtype='int8' is not one of", held=True),
    Case('ddpm-data-missing', ddpm('--steps', '1', '--out', out(), data='nope'), 'dataset not found', held=True),
    # ---- generate: models, devices, label check, sources
    Case('gen-untrained-model', lambda w, c: gen('--out', out())(w, c)[:3] + [f'ddpm:{w/"untrained"}'] + gen('--out', out())(w, c)[4:],
         'was never trained'),
    Case('gen-device-cuda', gen('--device', 'cuda', '--out', out()), 'torch sees no CUDA GPU', gpu=True),
    Case('gen-device-cuda-7', gen('--device', 'cuda:7', '--out', out()), "device='cuda:7'"),
    Case('gen-label-check-text', gen('--label-check', path('text.pt'), '--out', out()), 'not a PyTorch .pt checkpoint'),
    Case('gen-label-check-png', gen('--label-check', path('junk.png'), '--out', out()), 'not YOLO weights'),
    Case('gen-label-check-tensors', gen('--label-check', path('tensors.pt'), '--out', out()), 'no Ultralytics model'),
    Case('gen-label-check-payload', gen('--label-check', path('payload.pt'), '--out', out()), "names 'posix.system'"),
    Case('gen-label-check-ddpm-weights', gen('--label-check', path('model', 'unet', 'diffusion_pytorch_model.safetensors'), '--out', out()),
         'not a PyTorch .pt checkpoint'),
    Case('gen-label-check-folder', gen('--label-check', path('model'), '--out', out()), 'label-check weights not found'),
    Case('gen-1x1-image', gen('--out', out(), data=lambda w, c: small_image_data(w, c, 1)), 'tiny.png: image is 1x1 px'),
    Case('gen-8x8-image', gen('--out', out(), data=lambda w, c: small_image_data(w, c, 8)), 'tiny.png: image is 8x8 px'),
    Case('gen-model-missing', lambda w, c: ['generate', w/'data', '--generator', f'ddpm:{w/"nope"}', '--out', w/'out'/c, '--quiet'],
         'does not exist', held=True),
    Case('gen-unknown-generator', lambda w, c: ['generate', w/'data', '--generator', 'magic', '--out', w/'out'/c, '--quiet'],
         "unknown generator 'magic'", held=True),
    Case('gen-ddpm-no-model', lambda w, c: ['generate', w/'data', '--out', w/'out'/c, '--quiet'], "generator 'ddpm' needs a model", held=True),
    Case('gen-parts-nope', gen('--parts', 'nope', '--out', out()), "--parts names 'nope'", held=True),
    Case('gen-dtype-fp16', gen('--dtype', 'fp16', '--out', out()), "dtype='fp16' is not one of", held=True),
    Case('gen-n-0', lambda w, c: gen('--out', out())(w, c)[:4] + ['--n', '0'] + gen('--out', out())(w, c)[6:], 'n_per_image=0', held=True),
    Case('gen-other-settings', gen('--strength', '0.6', '--out', path('var')), 'other settings', held=True),
    Case('gen-other-batch-size', gen('--batch-size', '3', '--out', path('var')), 'computed 8 per model call, but this run would compute 3'),
    # ---- crop banks, paste options, a generator's own folder (issue 24)
    Case('gen-paste-bank-record-truncated', paste('--out', out(), damage=lambda t: t[:len(t) // 2]), 'bank.json is not a complete record'),
    Case('gen-paste-bank-record-no-sources', paste('--out', out(), damage=record_without('sources')), "bank.json has no 'sources'"),
    Case('gen-paste-bank-record-no-crops', paste('--out', out(), damage=record_without('crops')), "bank.json has no 'crops'"),
    Case('gen-paste-bank-record-missing', paste('--out', out(), damage=lambda t: None), 'no bank.json'),
    Case('gen-paste-bank-record-other-sources', paste('--out', out(), damage=lambda t: json.dumps({**json.loads(t), 'sources': json.loads(t)['sources'][1:]})),
         'bank.json does not describe crops.safetensors'),
    Case('gen-paste-k-0', paste('--option', 'k=0', '--out', out()), 'k=0 must be an integer ≥ 1'),
    Case('gen-paste-k-true', paste('--option', 'k=True', '--out', out()), 'k=True must be an integer ≥ 1'),
    Case('gen-ddpm-paste-k-0', paste('--option', 'k=0', '--option', lambda w, c: f'harmonizer=ddpm:{w/"model"}', '--out', out(),
                                     name='ddpm-paste'), 'k=0 must be an integer ≥ 1'),
    Case('gen-out-is-bank', paste('--out', '<bank>'), "--out is the generator's model folder"),
    Case('gen-out-in-bank', paste('--out', lambda w, c: w/'cases'/c/'bank'/'gen'), "--out is inside the generator's model folder"),
    Case('gen-out-is-model', gen('--out', path('model')), "--out is the generator's model folder"),
    Case('gen-out-in-model', gen('--out', path('model', 'unet', 'gen')), "--out is inside the generator's model folder"),
    Case('gen-out-is-harmonizer', paste('--option', lambda w, c: f'harmonizer=ddpm:{w/"model"}', '--out', path('model'), name='ddpm-paste'),
         "--out is the generator's model folder"),
    Case('convert-missing', convert(path('nope'), '--out', out()), 'dataset not found', held=True),
    Case('convert-no-format', convert(lambda w, c: (w/'cases'/c).mkdir(parents=True) or w/'cases'/c, '--out', out()),
         'cannot tell the dataset format', held=True),
    Case('simulate-bad-set', lambda w, c: ['simulate', '--out', w/'out'/c, '--set', 'nope=1', '--quiet'], "unknown scene knob 'nope'", held=True),
]


@pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
def test_refused_in_one_line_with_nothing_written(world, case, capsys):
    if case.gpu and torch.cuda.is_available(): pytest.skip('this machine has a GPU')
    argv = case.argv(world, case.id)
    before = snapshot(world)
    with unprivileged() if case.as_nobody else contextlib.nullcontext():
        rc, stdout, err = run(argv, capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and 'Traceback' not in err, (rc, err, stdout[-2000:])
    assert lines[0].startswith(f'synthkit {argv[0]}: error: ') and case.msg in lines[0], lines[0]
    assert snapshot(world) == before   # nothing written, nothing lost, no mode changed
    assert not (world/'RAN').exists()  # no pickle ran


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
    assert sum(not c.held for c in CASES) >= 60


# ---------------------------------------------------------------- right results (exit 0), each failed before issue 12
def _gen(w, out, *extra):
    return ['generate', w/'data', '--generator', f'ddpm:{w/"model"}', '--n', '2', '--strength', '0.5', '--steps', '4',
            '--out', out, '--quiet', *extra]


def _images(out: Path) -> dict:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob('*')) if p.is_file() and p.name != 'data.yaml'}


def test_resume_remakes_deleted_and_overwritten_outputs(world, tmp_path, capsys):
    ref, out = tmp_path/'ref', tmp_path/'out'
    assert run(_gen(world, ref), capsys)[0] == 0
    shutil.copytree(ref, out)
    recs = Manifest(out).read()
    (out/recs[0]['path']).unlink()                                              # deleted since
    save_image(np.zeros((48, 48), np.uint8), out/recs[3]['path'])               # overwritten since
    (out/recs[5]['label']).write_text('0 0.5 0.5 0.9 0.9\n')                    # a label changed since
    (out/recs[7]['label']).unlink()                                             # a label deleted since
    rc, stdout, err = run(_gen(world, out), capsys)
    assert rc == 0 and '4 written' in stdout and 'made again' in stdout, (stdout, err)
    assert _images(out) == _images(ref)   # the same bytes as the uninterrupted run, one record per output


def test_umask_modes(world, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        assert run(['convert', world/'data', '--out', tmp_path/'c'], capsys)[0] == 0
        assert run(_gen(world, tmp_path/'g'), capsys)[0] == 0
        assert run(['train-ddpm', world/'data', '--out', tmp_path/'m', '--crop', '32', '--batch', '2', '--steps', '1', '--quiet'], capsys)[0] == 0
    finally: os.umask(old)
    for f in [tmp_path/'c'/'data.yaml', tmp_path/'c'/'import_report.txt', next((tmp_path/'c'/'labels'/'train').iterdir()),
              tmp_path/'g'/'data.yaml', tmp_path/'g'/'manifest.jsonl', next((tmp_path/'g'/'images'/'train').iterdir()),
              tmp_path/'m'/CONFIG_FILE, tmp_path/'m'/STATE_FILE, tmp_path/'m'/'unet'/'diffusion_pytorch_model.safetensors']:
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def test_unreadable_inputs_are_named(world, tmp_path, capsys):
    d = tmp_path/'data'; shutil.copytree(world/'data', d)
    (d/'data.yaml').write_text((d/'data.yaml').read_text().replace(str(world/'data'), str(d)))
    (d/'images'/'train'/'toy001.png').write_bytes(b'\x89PNG\r\n\x1a\n broken')
    for argv in (['generate', d, '--generator', f'ddpm:{world/"model"}', '--n', '1', '--strength', '0.5', '--steps', '4', '--out', tmp_path/'g', '--quiet'],
                 ['train-ddpm', d, '--out', tmp_path/'m', '--crop', '32', '--batch', '2', '--steps', '1', '--quiet']):
        rc, stdout, err = run(argv, capsys)
        assert rc == 0 and 'images/train/toy001.png: unreadable or truncated image' in stdout and '1 skipped image' in stdout, (stdout, err)


def test_missing_label_file_is_a_background_image(world, tmp_path, capsys):
    d = tmp_path/'data'; shutil.copytree(world/'data', d)
    (d/'data.yaml').write_text((d/'data.yaml').read_text().replace(str(world/'data'), str(d)))
    (d/'labels'/'train'/'toy001.txt').unlink()
    rc, stdout, _ = run(['convert', d, '--out', tmp_path/'c'], capsys)
    assert rc == 0 and 'images/train/toy001.png: no label file labels/train/toy001.txt; read as a background image' in stdout
    assert (tmp_path/'c'/'labels'/'train'/'toy001.txt').read_text() == '' and '1 background image' in (tmp_path/'c'/'import_report.txt').read_text()
    assert 'toy001' in load_dataset(d).ids and 'toy001' not in load_dataset(d, missing_labels='skip').ids


def test_an_older_pickled_state_resumes_and_is_resaved(world, tmp_path, capsys):
    from synthkit.ddpm_train import read_state
    d = tmp_path/'m'
    assert run(['train-ddpm', world/'data', '--out', d, '--crop', '32', '--batch', '2', '--steps', '1', '--quiet'], capsys)[0] == 0
    torch.save(read_state(d), d/OLD_STATE_FILE)   # the pickled form of the resume state
    for f in (STATE_FILE, STATE_JSON): (d/f).unlink()
    rc, stdout, err = run(['train-ddpm', world/'data', '--out', d, '--crop', '32', '--batch', '2', '--steps', '2', '--quiet'], capsys)
    assert rc == 0 and 'trained 2 iterations' in stdout, err
    assert (d/STATE_FILE).is_file() and (d/STATE_JSON).is_file() and not (d/OLD_STATE_FILE).exists()
