"""synthkit.detect: offline YOLO training, its budget rule and its error messages."""
import json
from pathlib import Path

import numpy as np
import pytest

from synthkit.errors import SynthkitError
from synthkit.detect import DetectConfig, plan_budget, split_images, train_detector, evaluate, Detector
from synthkit.testing import toy_dataset


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    return toy_dataset(tmp_path_factory.mktemp('toy')/'toy', n=16, size=64, seed=3)


def test_equal_steps_budget_across_training_set_sizes():
    c = DetectConfig(steps=120, batch=16, warmup_steps=24)
    plans = [plan_budget(c, n) for n in (40, 40 * 3, 40 * 11)]
    for p in plans:  # at least the budget, never more than one extra epoch's worth
        assert 120 <= p['steps'] < 120 + p['batches_per_epoch']
        assert p['warmup_epochs'] * p['batches_per_epoch'] == pytest.approx(24, abs=0.01)
    assert [p['epochs'] for p in plans] == [40, 15, 5]
    assert plan_budget(DetectConfig(epochs=9), 440)['epochs'] == 9  # equal-epochs option


def test_missing_pt_is_an_error_not_a_download(toy, tmp_path):
    with pytest.raises(SynthkitError, match='never downloads') as e:
        train_detector(toy, tmp_path/'r', DetectConfig(model=str(tmp_path/'yolov8s.pt'), imgsz=64))
    assert 'yolov8s.pt' in str(e.value)
    assert not (tmp_path/'r'/'train').exists()


def test_data_yaml_errors(tmp_path):
    with pytest.raises(SynthkitError, match='data.yaml not found'):
        train_detector(tmp_path/'none'/'data.yaml', tmp_path/'r', DetectConfig(imgsz=64))
    bad = tmp_path/'bad.yaml'; bad.write_text('names: [ship]\n')
    with pytest.raises(SynthkitError, match="needs at least 'train:'") as e:
        split_images(bad)
    assert str(bad) in str(e.value)
    empty = tmp_path/'empty.yaml'; (tmp_path/'imgs').mkdir(); empty.write_text(f'path: {tmp_path}\ntrain: imgs\nnames: [ship]\n')
    with pytest.raises(SynthkitError, match='the train part has no images'):
        split_images(empty)
    with pytest.raises(SynthkitError, match="no 'test' entry"):
        split_images(empty, 'test')


def test_bad_config_values():
    with pytest.raises(SynthkitError, match='imgsz=100 must be a multiple of 32'): DetectConfig(imgsz=100).check()
    with pytest.raises(SynthkitError, match="model='yolov8n'"): DetectConfig(model='yolov8n').check()


def test_train_is_reproducible_and_logged(toy, tmp_path):
    c = DetectConfig(imgsz=64, steps=2, batch=8, warmup_steps=0, seed=5)
    a = train_detector(toy, tmp_path/'a', c)
    b = train_detector(toy, tmp_path/'b', c)
    assert a.metrics == b.metrics and a.curve[0]['train/box_loss'] == b.curve[0]['train/box_loss']
    assert (tmp_path/'a'/'train.log').stat().st_size > 0 and (tmp_path/'a'/'train'/'results.csv').is_file()
    rec = json.loads((tmp_path/'a'/'run.json').read_text())
    assert rec['config']['seed'] == 5 and rec['budget']['steps'] == 2 and rec['split'] == 'test'
    m = evaluate(a.weights, toy, split='val', imgsz=64)
    assert set(m) == {'map50', 'map50_95', 'precision', 'recall'} and all(0 <= v <= 1 for v in m.values())
    boxes, scores, cls = Detector(a.weights, imgsz=64, conf=0.0).predict(np.zeros((64, 64), np.uint8))
    assert boxes.shape[1:] == (4,) and len(scores) == len(cls) == len(boxes)
