"""`synthkit convert` end to end, through the console script."""
import json, subprocess, sys
from pathlib import Path

import numpy as np

from synthkit.images import save_image

SYNTHKIT = str(Path(sys.executable).parent/'synthkit')


def run(*args):
    return subprocess.run([SYNTHKIT, 'convert', *map(str, args)], capture_output=True, text=True, timeout=120)


def test_convert_ssdd_dev_zero_problems(ssdd_dev, tmp_path):
    r = run(ssdd_dev, '--out', tmp_path/'y', '--link')
    assert r.returncode == 0, r.stderr
    assert "imported Dataset(232 images, 479 boxes, classes=['ship']" in r.stdout and 'report: no problems found' in r.stdout
    assert len(list((tmp_path/'y/images/train').iterdir())) == 232 and len(list((tmp_path/'y/labels/train').iterdir())) == 232
    assert 'no problems found' in (tmp_path/'y/import_report.txt').read_text()
    n_boxes = sum(len(p.read_text().splitlines()) for p in (tmp_path/'y/labels/train').iterdir())
    assert n_boxes == 479


def test_convert_with_split_seed(ssdd_dev, tmp_path):
    r = run(ssdd_dev, '--out', tmp_path/'y', '--split-seed', 1, '--split', 'split_2', '--no-check-pixels', '--link')
    assert r.returncode == 0, r.stderr
    assert 'split split_2 (seed 1): train 40, val 20, test 100; 72 images in no part' in r.stdout
    sp = json.loads((tmp_path/'y/splits.json').read_text())
    assert sp['split_1']['test'] == sp['split_2']['test'] and sp['split_2']['seed'] == 1
    assert sorted(p.stem for p in (tmp_path/'y/images/test').iterdir()) == sorted(sp['split_2']['test'])


def _bad_yolo(d):
    save_image(np.zeros((40, 64), np.uint8), d/'images/a.png'); save_image(np.zeros((40, 64), np.uint8), d/'images/b.png')
    (d/'labels').mkdir(); (d/'labels/a.txt').write_text('0 0.5 0.5 0.2 0.2\n0 0.99 0.5 0.2 0.2\n')
    (d/'data.yaml').write_text('train: images\nval: images\nnames: [ship]\n')
    return d


def test_convert_reports_problems_and_strict_fails(tmp_path):
    src = _bad_yolo(tmp_path/'src')
    r = run(src, '--out', tmp_path/'y')
    assert r.returncode == 0, r.stderr
    assert 'report: 1 background image, 1 clipped box, 1 note' in r.stdout and 'counted once' in r.stdout
    assert 'labels/a.txt:2: box' in r.stdout and 'images/b.png: no label file labels/b.txt; read as a background image' in r.stdout
    assert 'b.txt' in {p.name for p in (tmp_path/'y/labels/train').iterdir()}
    assert 'clipped box' in (tmp_path/'y/import_report.txt').read_text()
    r = run(src, '--out', tmp_path/'y', '--strict')
    assert r.returncode == 1
    r = run(src, '--out', tmp_path/'y2', '--out-of-bounds', 'reject')
    assert 'dropped box' in r.stdout
    r = run(src, '--out', tmp_path/'y3', '--missing-labels', 'skip')
    assert r.returncode == 0 and 'images/b.png: no label file labels/b.txt (an empty file means "no objects") [skipped image]' in r.stdout


def test_convert_errors_are_one_line_exit_2(tmp_path):
    r = run(tmp_path/'nope', '--out', tmp_path/'y')
    assert r.returncode == 2 and r.stderr.strip().count('\n') == 0
    assert r.stderr.startswith(f'synthkit convert: error: {tmp_path}/nope: dataset not found')
    (tmp_path/'e').mkdir()
    r = run(tmp_path/'e', '--out', tmp_path/'y')
    assert r.returncode == 2 and 'cannot tell the dataset format' in r.stderr and 'Traceback' not in r.stderr
    save_image(np.zeros((40, 64), np.uint8), tmp_path/'e/images/a.png'); (tmp_path/'e/labels').mkdir()
    r = run(tmp_path/'e', '--out', tmp_path/'y', '--missing-labels', 'skip')   # its only image has no label file
    assert r.returncode == 2 and 'no usable images' in r.stderr
