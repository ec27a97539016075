"""Importers, validation messages and the YOLO exporter (synthkit.data.formats)."""
import json, os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthkit.errors import SynthkitError
from synthkit.images import save_image
from synthkit.data.items import Item, Dataset
from synthkit.data.formats import (load_dataset, load_yolo, load_coco, load_voc, detect_format, export_yolo,
                                   write_yolo_label, write_data_yaml, read_yolo_label, probe_image)


def msgs(ds):
    return [str(p).replace(f'{ds.root}/', '') for p in ds.report.problems]


def grey(d, name, w=64, h=40, dtype=np.uint8, ch=()):
    a = (np.arange(w * h).reshape(h, w) % 200).astype(dtype)
    if ch: a = np.repeat(a[..., None], 3, 2)
    return save_image(a, Path(d)/name)


def yolo(d, labels, suffix='png', names='ship\n'):
    "labels: image stem -> label text, or None for no label file."
    d = Path(d)
    for n, text in labels.items():
        grey(d, f'images/{n}.{suffix}')
        if text is not None:
            (d/'labels').mkdir(exist_ok=True); (d/'labels'/f'{n}.txt').write_text(text)
    if names: (d/'classes.txt').write_text(names)
    return d


XML = ('<annotation><filename>{f}</filename><size><width>{w}</width><height>{h}</height><depth>1</depth></size>{objs}</annotation>')
OBJ = '<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>'


def voc(d, anns, w=64, h=40):
    "anns: stem -> [(name, box)]; images 64x40 png."
    d = Path(d); (d/'Annotations').mkdir(parents=True, exist_ok=True)
    for stem, objs in anns.items():
        grey(d, f'JPEGImages/{stem}.png')
        (d/'Annotations'/f'{stem}.xml').write_text(XML.format(f=f'{stem}.png', w=w, h=h, objs=''.join(OBJ.format(n=n, b=b) for n, b in objs)))
    return d


def coco(d, images, anns, cats=({'id': 1, 'name': 'ship'},), stem='train2017'):
    d = Path(d); (d/'annotations').mkdir(parents=True, exist_ok=True)
    for im in images:
        if not (d/'JPEGImages'/im['file_name']).exists(): grey(d, f"JPEGImages/{im['file_name']}")
    js = d/'annotations'/f'{stem}.json'
    js.write_text(json.dumps({'images': images, 'annotations': anns, 'categories': list(cats)}))
    return d


# ---------------------------------------------------------------- real data
def _xml_counts(root):
    n_img = n_box = 0
    for x in sorted((root/'Annotations').glob('*.xml')):
        n_img += 1; n_box += len(ET.parse(x).getroot().findall('object'))
    return n_img, n_box


def test_ssdd_dev_counts_match_the_xml(ssdd_dev):
    ds = load_dataset(ssdd_dev)
    assert (len(ds), ds.n_boxes) == _xml_counts(ssdd_dev) == (232, 479)
    assert ds.report.problems == [] and ds.names == ['ship']
    it = ds['000005']
    assert it.boxes.tolist() == [[167, 166, 231, 204]] and (it.width, it.height) == (420, 317)


def test_ssdd_round_trip_voc_yolo_voc_same_boxes(ssdd_dev, tmp_path):
    ds = load_dataset(ssdd_dev)
    from synthkit.data.splits import make_splits
    parts = make_splits(ds, seed=0)['split_1'].parts
    y = export_yolo(ds, tmp_path/'y', parts, link=True)
    back = load_dataset(y)
    assert back.report.problems == [] and len(back) == 200 and back.names == ds.names
    for i in back.ids:
        a, b = ds[i], back[i]
        assert (a.width, a.height) == (b.width, b.height) and np.array_equal(a.cls, b.cls)
        np.testing.assert_allclose(b.boxes, a.boxes, atol=1e-2)
    assert {back[i].meta['split'] for i in parts['test']} == {'test'}


def test_data_yaml_is_accepted_by_ultralytics(tmp_path):
    from synthkit.offline import setup_offline
    setup_offline()
    from ultralytics.data.utils import check_det_dataset
    ds = Dataset([Item(grey(tmp_path, f'src/{i}.png'), 64, 40, [[1, 2, 30, 20]], [0], str(i)) for i in range(3)], ['ship'])
    y = export_yolo(ds, tmp_path/'out', {'train': ['0', '1'], 'val': ['2']})
    info = check_det_dataset(str(y))
    assert info['nc'] == 1 and info['names'] == {0: 'ship'} and Path(info['val']).name == 'val'
    y2 = export_yolo(ds, tmp_path/'out2')      # no parts: val points at train, and the file says so
    assert '# no val part' in y2.read_text() and '# no split given' in y2.read_text()
    assert Path(check_det_dataset(str(y2))['val']).name == 'train'


# ---------------------------------------------------------------- images
@pytest.mark.parametrize('name,dtype,ch', [('a.png', np.uint8, ()), ('b.png', np.uint16, ()), ('c.tif', np.uint16, ()),
                                           ('d.jpg', np.uint8, (3,)), ('e.tiff', np.uint8, ()), ('f.png', np.uint8, (3,))])
def test_8_and_16_bit_grey_and_rgb_images(tmp_path, name, dtype, ch):
    grey(tmp_path, f'images/{name}', dtype=dtype, ch=ch)
    (tmp_path/'labels').mkdir(); (tmp_path/'labels'/(Path(name).stem + '.txt')).write_text('0 0.5 0.5 0.5 0.5\n')
    ds = load_yolo(tmp_path, names=['ship'])
    it = ds[Path(name).stem]
    assert ds.report.problems == [] and (it.width, it.height) == (64, 40) and it.boxes.tolist() == [[16, 10, 48, 30]]
    assert it.read().dtype == dtype


@pytest.mark.parametrize('suffix', ['jpg', 'png', 'tif'])
def test_truncated_image_is_skipped_naming_the_file(tmp_path, suffix):
    yolo(tmp_path, {'a': '0 0.5 0.5 0.2 0.2\n', 'b': ''}, suffix=suffix)
    a = tmp_path/f'images/a.{suffix}'
    Image.fromarray((np.random.default_rng(0).integers(0, 255, (200, 300))).astype(np.uint8)).save(a)
    a.write_bytes(a.read_bytes()[:len(a.read_bytes()) // 2])
    ds = load_yolo(tmp_path)
    assert ds.ids == ['b']
    assert msgs(ds)[0].startswith(f'images/a.{suffix}: unreadable or truncated image') and msgs(ds)[0].endswith('[skipped image]')


def test_unreadable_image_and_check_pixels_false(tmp_path):
    yolo(tmp_path, {'a': '', 'b': ''})
    (tmp_path/'images/a.png').write_bytes(b'not an image at all')
    ds = load_yolo(tmp_path)
    assert ds.ids == ['b'] and msgs(ds)[0].startswith('images/a.png: unreadable or truncated image (')
    # a truncated file passes a header-only check: check_pixels=False trades that for speed
    p = grey(tmp_path, 'images/b.png', w=300, h=200); p.write_bytes(p.read_bytes()[:400])
    assert 'b' in load_yolo(tmp_path, check_pixels=False).ids and 'b' not in load_yolo(tmp_path).ids
    with pytest.raises(SynthkitError, match='truncated'): probe_image(p)


# ---------------------------------------------------------------- labels
def test_empty_label_is_background_missing_label_is_background_by_default(tmp_path):
    ds = load_yolo(yolo(tmp_path, {'a': '', 'b': None}))
    assert ds.ids == ['a', 'b'] and ds['a'].n_boxes == 0 and ds['b'].n_boxes == 0
    assert msgs(ds) == ['images/b.png: no label file labels/b.txt; read as a background image (no objects) [background image]']
    assert ds.report.summary().startswith('1 background image\n')
    ds = load_yolo(tmp_path, missing_labels='skip')
    assert ds.ids == ['a'] and msgs(ds) == ['images/b.png: no label file labels/b.txt (an empty file means "no objects") [skipped image]']


@pytest.mark.parametrize('text,line,what', [
    ('0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2\n', 2, "4 numbers in '0 0.5 0.5 0.2'"),
    ('\n0 0.5 zero 0.2 0.2\n', 2, "cannot read '0 0.5 zero 0.2 0.2' as numbers"),
    ('0.5 0.5 0.5 0.2 0.2\n', 1, "class '0.5' is not a class index"),
    ('-1 0.5 0.5 0.2 0.2\n', 1, "class '-1' is not a class index"),
])
def test_malformed_label_line_names_file_and_line(tmp_path, text, line, what):
    ds = load_yolo(yolo(tmp_path, {'a': text}))
    assert len(ds) == 0 and msgs(ds)[0].startswith(f'labels/a.txt:{line}: {what}') and msgs(ds)[0].endswith('[skipped image]')
    with pytest.raises(SynthkitError) as e: read_yolo_label(tmp_path/'labels/a.txt')
    assert e.value.line == line


def test_segment_lines_become_their_bounding_box(tmp_path):
    ds = load_yolo(yolo(tmp_path, {'a': '0 0.25 0.25 0.75 0.25 0.5 0.75\n'}))
    assert ds['a'].boxes.tolist() == [[16, 10, 48, 30]] and ds.report.problems == []


@pytest.mark.parametrize('mode,action,n', [('clip', 'clipped box', 2), ('reject', 'dropped box', 1)])
def test_box_outside_the_image_clip_or_reject(tmp_path, mode, action, n):
    ds = load_yolo(yolo(tmp_path, {'a': '0 0.5 0.5 0.2 0.2\n0 0.95 0.5 0.2 0.2\n0 1.5 0.5 0.2 0.2\n'}), out_of_bounds=mode)
    assert ds['a'].n_boxes == n and ds['a'].boxes.max() <= 64
    m = msgs(ds)
    assert m[0] .startswith('labels/a.txt:2: box (54.4, 16, 67.2, 24) is outside the 64x40 image') and m[0].endswith(f'[{action}]')
    if mode == 'clip': assert 'clipped to (54.4, 16, 64, 24)' in m[0]
    assert m[1] == 'labels/a.txt:3: box (89.6, 16, 102.4, 24) is outside the 64x40 image' + (' entirely' if mode == 'clip' else '') + ' [dropped box]'


def test_rounding_noise_at_the_border_is_not_a_problem(tmp_path):
    ds = load_yolo(yolo(tmp_path, {'a': '0 0.9 0.5 0.2000001 0.2\n'}))
    assert ds.report.problems == [] and ds['a'].boxes[0, 2] == 64


def test_zero_area_box_is_dropped(tmp_path):
    ds = load_yolo(yolo(tmp_path, {'a': '0 0.5 0.5 0 0.2\n0 0.5 0.5 0.2 0.2\n'}))
    assert ds['a'].n_boxes == 1
    assert msgs(ds) == ['labels/a.txt:1: zero-area box (32, 16, 32, 24) (x1 <= x0 or y1 <= y0) [dropped box]']


def test_unknown_class_yolo_voc_coco(tmp_path):
    ds = load_yolo(yolo(tmp_path/'y', {'a': '0 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.2 0.2\n', 'b': ''}))
    assert ds.ids == ['b'] and msgs(ds) == ['labels/a.txt:2: unknown class index 2 (the class names have indices 0..0) [skipped image]']
    ds = load_voc(voc(tmp_path/'v', {'a': [('ship', (1, 1, 9, 9)), ('boat', (2, 2, 8, 8))]}), names=['ship'])
    assert len(ds) == 0 and msgs(ds) == ["Annotations/a.xml: unknown class 'boat' (not one of the 1 class names) [skipped image]"]
    ds = load_coco(coco(tmp_path/'c', [{'id': 1, 'file_name': 'a.png', 'width': 64, 'height': 40}],
                        [{'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': [1, 1, 5, 5]}]), names=['boat'])
    assert len(ds) == 0 and msgs(ds) == ["annotations/train2017.json (a.png): unknown class 'category_id 1' (not one of the 1 class names) [skipped image]"]


def test_names_invented_when_absent_is_noted(tmp_path):
    ds = load_yolo(yolo(tmp_path, {'a': '2 0.5 0.5 0.2 0.2\n'}, names=None))
    assert ds.names == ['class0', 'class1', 'class2'] and ds.report.problems[0].action == 'note'


# ---------------------------------------------------------------- duplicates, sizes
def test_duplicate_image_names_yolo(tmp_path):
    yolo(tmp_path, {'a': '0 0.5 0.5 0.2 0.2\n', 'b': ''}); grey(tmp_path, 'images/a.jpg')
    ds = load_yolo(tmp_path)
    assert ds.ids == ['b']
    assert msgs(ds) == ["images/a.jpg: duplicate image name 'a' (also images/a.png) [skipped image]",
                        "images/a.png: duplicate image name 'a' (also images/a.jpg) [skipped image]"]


def test_duplicate_across_parts_yolo(tmp_path):
    for part in ('train', 'val'):
        grey(tmp_path, f'images/{part}/a.png'); (tmp_path/'labels'/part).mkdir(parents=True); (tmp_path/'labels'/part/'a.txt').write_text('')
    ds = load_yolo(tmp_path, names=['ship'])
    assert len(ds) == 0 and all("duplicate image name 'a'" in m for m in msgs(ds)) and len(msgs(ds)) == 2


def test_duplicate_image_names_voc_and_coco(tmp_path):
    d = voc(tmp_path/'v', {'a': [('ship', (1, 1, 9, 9))], 'b': []}); grey(d, 'JPEGImages/a.tif')
    ds = load_voc(d)
    assert ds.ids == ['b'] and msgs(ds) == [
        "Annotations/a.xml: duplicate image name 'a' (a.png, a.tif): cannot tell which image this annotation describes [skipped image]"]
    ims = [{'id': 1, 'file_name': 'a.png', 'width': 64, 'height': 40}, {'id': 2, 'file_name': 'a.png', 'width': 64, 'height': 40}]
    ds = load_coco(coco(tmp_path/'c', ims, []))
    assert len(ds) == 0 and len(msgs(ds)) == 2 and "duplicate image name 'a'" in msgs(ds)[0]


def test_size_that_disagrees_with_the_annotation(tmp_path):
    ds = load_voc(voc(tmp_path/'v', {'a': [('ship', (1, 1, 9, 9))]}, w=640, h=400))
    assert msgs(ds) == ['Annotations/a.xml: annotation says the image is 640x400 but a.png is 64x40 [skipped image]']
    ds = load_coco(coco(tmp_path/'c', [{'id': 1, 'file_name': 'a.png', 'width': 40, 'height': 64}], []))
    assert msgs(ds) == ['annotations/train2017.json (a.png): annotation says the image is 40x64 but a.png is 64x40 [skipped image]']


def test_voc_missing_annotation_missing_image_bad_xml(tmp_path):
    d = voc(tmp_path, {'a': [('ship', (1, 1, 9, 9))]})
    grey(d, 'JPEGImages/b.png')
    (d/'Annotations/c.xml').write_text(XML.format(f='c.png', w=64, h=40, objs=''))
    (d/'Annotations/e.xml').write_text('<annotation><object>')
    (d/'Annotations/f.xml').write_text(XML.format(f='f.png', w=64, h=40, objs=OBJ.format(n='ship', b=(1, 'x', 9, 9))))
    grey(d, 'JPEGImages/f.png')
    ds = load_voc(d)
    assert ds.ids == ['a']
    assert msgs(ds) == ['Annotations/c.xml: no image c.* or c.png in JPEGImages/ [skipped image]',
                        'Annotations/e.xml:1: not valid xml (no element found: line 1, column 20) [skipped image]',
                        'Annotations/f.xml: <ymin>x</ymin> is not a number — fix the annotation [skipped image]'.replace(' — fix the annotation', ''),
                        'JPEGImages/b.png: no annotation Annotations/b.xml [skipped image]']


def test_voc_imagesets_give_parts_and_empty_xml_is_background(tmp_path):
    d = voc(tmp_path, {'a': [('ship', (1, 1, 9, 9))], 'b': []})
    (d/'ImageSets/Main').mkdir(parents=True); (d/'ImageSets/Main/test.txt').write_text('b\n')
    ds = load_dataset(d)
    assert ds['b'].n_boxes == 0 and ds['b'].meta['split'] == 'test' and 'split' not in ds['a'].meta


# ---------------------------------------------------------------- COCO
def test_coco_hrsid_layout_parts_crowd_and_orphans(tmp_path):
    ims = [{'id': 1, 'file_name': 'a.png', 'width': 64, 'height': 40}, {'id': 2, 'file_name': 'b.png', 'width': 64, 'height': 40}]
    anns = [{'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': [2, 3, 10, 8]},
            {'id': 2, 'image_id': 1, 'category_id': 1, 'bbox': [0, 0, 64, 40], 'iscrowd': 1},
            {'id': 3, 'image_id': 9, 'category_id': 1, 'bbox': [0, 0, 4, 4]},
            {'id': 4, 'image_id': 2, 'category_id': 1, 'bbox': [5, 5, 0, 4]}]
    coco(tmp_path, ims, anns)
    coco(tmp_path, [{'id': 1, 'file_name': 'c.png', 'width': 64, 'height': 40}], [], stem='test2017')
    assert detect_format(tmp_path) == 'coco'
    ds = load_dataset(tmp_path)
    assert sorted(ds.ids) == ['a', 'b', 'c'] and ds['a'].boxes.tolist() == [[2, 3, 12, 11]] and ds['b'].n_boxes == 0
    assert {i: ds[i].meta['split'] for i in ds.ids} == {'a': 'train', 'b': 'train', 'c': 'test'}
    assert msgs(ds) == ['annotations/train2017.json: annotation 3 refers to image_id 9, which is not in images [dropped box]',
                        'annotations/train2017.json: crowd annotation 2 of a.png (a region, not an object) [dropped box]',
                        'annotations/train2017.json (b.png): zero-area box (5, 5, 5, 9) (x1 <= x0 or y1 <= y0) [dropped box]']
    assert len(load_dataset(tmp_path/'annotations/test2017.json')) == 1


def test_coco_bad_json_and_mismatched_categories(tmp_path):
    (tmp_path/'x.json').write_text('{"images": [\n')
    with pytest.raises(SynthkitError, match=r'x.json:2: not valid json'): load_coco(tmp_path/'x.json')
    (tmp_path/'y.json').write_text('{"images": []}')
    with pytest.raises(SynthkitError, match='not a COCO detection file'): load_coco(tmp_path/'y.json')
    coco(tmp_path/'c', [], [], cats=[{'id': 1, 'name': 'ship'}])
    coco(tmp_path/'c', [], [], cats=[{'id': 1, 'name': 'boat'}], stem='val2017')
    with pytest.raises(SynthkitError, match=r"val2017.json: categories \['boat'\] differ from \['ship'\] in train2017.json"): load_coco(tmp_path/'c')


# ---------------------------------------------------------------- data.yaml and format detection
def test_data_yaml_parts_lists_and_moved_dataset(tmp_path):
    for part in ('train', 'val'):
        grey(tmp_path, f'images/{part}/{part}1.png'); (tmp_path/'labels'/part).mkdir(parents=True)
        (tmp_path/'labels'/part/f'{part}1.txt').write_text('0 0.5 0.5 0.2 0.2\n')
    (tmp_path/'val.txt').write_text('./images/val/val1.png\n')
    (tmp_path/'data.yaml').write_text('path: /nowhere/moved\ntrain: [images/train]\nval: val.txt\nnames: {0: ship}\n')
    ds = load_dataset(tmp_path/'data.yaml')
    assert {i: ds[i].meta['split'] for i in ds.ids} == {'train1': 'train', 'val1': 'val'}
    assert msgs(ds)[0].startswith('data.yaml: path: /nowhere/moved does not exist') and ds.report.problems[0].action == 'note'


@pytest.mark.parametrize('text,match', [
    ('train: [images\nnames: [a]', r'data.yaml:\d+: not valid YAML'),
    ('train: nowhere\nnames: [ship]', r'train: nowhere is neither a folder nor a .txt list'),
    ('names: [ship]', 'no train:, val: or test: entries'),
    ('train: .\nnames: {0: a, 2: b}', r'names keys \[0, 2\] are not 0..1'),
])
def test_bad_data_yaml(tmp_path, text, match):
    (tmp_path/'data.yaml').write_text(text)
    with pytest.raises(SynthkitError, match=match): load_yolo(tmp_path/'data.yaml')


def test_unknown_format_and_missing_path(tmp_path):
    with pytest.raises(SynthkitError, match='cannot tell the dataset format'): load_dataset(tmp_path)
    with pytest.raises(SynthkitError, match='dataset not found'): load_dataset(tmp_path/'nope')
    with pytest.raises(SynthkitError, match="format='xml'"): load_dataset(tmp_path, 'xml')
    with pytest.raises(SynthkitError, match="out_of_bounds='crop'"): load_dataset(tmp_path, out_of_bounds='crop')


# ---------------------------------------------------------------- writing
def test_write_yolo_label_is_atomic_and_empty_for_no_boxes(tmp_path):
    it = Item(tmp_path/'a.png', 100, 50, [[10, 5, 30, 25]], [1], 'a')
    p = write_yolo_label(tmp_path/'l/a.txt', it)
    assert p.read_text() == '1 0.200000 0.300000 0.200000 0.400000\n'
    assert write_yolo_label(tmp_path/'l/b.txt', Item(tmp_path/'b.png', 10, 10, [], [], 'b')).read_text() == ''
    assert sorted(os.listdir(tmp_path/'l')) == ['a.txt', 'b.txt']


def test_export_checks_parts_and_refuses_to_mix(tmp_path):
    ds = Dataset([Item(grey(tmp_path, f'src/{i}.png'), 64, 40, [], [], i) for i in 'abc'], ['ship'])
    with pytest.raises(SynthkitError, match="image id 'a' is in both part 'train' and 'val'"):
        export_yolo(ds, tmp_path/'o', {'train': ['a'], 'val': ['a']})
    with pytest.raises(SynthkitError, match="names image id 'z', which is not in the dataset"):
        export_yolo(ds, tmp_path/'o', {'train': ['z']})
    export_yolo(ds, tmp_path/'o', {'train': ['a', 'b'], 'val': ['c']})
    (tmp_path/'o/labels/train.cache').write_bytes(b'x')                  # Ultralytics' cache: derived, removed
    export_yolo(ds, tmp_path/'o', {'train': ['a', 'b'], 'val': ['c']})   # the same again is fine
    assert not (tmp_path/'o/labels/train.cache').exists()
    with pytest.raises(SynthkitError, match='other files already in .* would mix into this dataset'):
        export_yolo(ds, tmp_path/'o', {'train': ['a'], 'val': ['c']})
    export_yolo(ds, tmp_path/'o', {'train': ['a'], 'val': ['c']}, overwrite=True)
    assert sorted(load_yolo(tmp_path/'o').ids) == ['a', 'c']


def test_export_link_hard_links(tmp_path):
    ds = Dataset([Item(grey(tmp_path, 'src/a.png'), 64, 40, [[1, 1, 5, 5]], [0], 'sub/a')], ['ship'])
    export_yolo(ds, tmp_path/'o', link=True)
    out = tmp_path/'o/images/train/sub/a.png'
    assert os.path.samefile(out, tmp_path/'src/a.png') and (tmp_path/'o/labels/train/sub/a.txt').is_file()
    assert load_yolo(tmp_path/'o').ids == ['sub/a']


def test_coco_file_names_with_folders(tmp_path):
    grey(tmp_path, 'imgs/sub/a.png')
    (tmp_path/'c.json').write_text(json.dumps({'images': [{'id': 1, 'file_name': 'imgs/sub/a.png', 'width': 64, 'height': 40}],
        'annotations': [{'id': 1, 'image_id': 1, 'category_id': 3, 'bbox': [1, 2, 3, 4]}], 'categories': [{'id': 3, 'name': 'ship'}]}))
    ds = load_dataset(tmp_path/'c.json')
    assert ds.ids == ['imgs/sub/a'] and ds[0].boxes.tolist() == [[1, 2, 4, 6]] and ds.report.problems == []
