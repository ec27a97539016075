"Label check with fake detectors: keep / drop / relabel, thresholds, empty images, errors."
import numpy as np
import pytest

from synthkit.errors import SynthkitError
from synthkit.labelcheck import LabelCheck, LabelVerdict, match_boxes

IMG = np.zeros((64, 64), np.uint8)
SRC = np.array([[5, 5, 15, 15], [30, 30, 50, 40], [2, 40, 12, 60]], np.float32)
CLS = np.array([0, 0, 1])


class Fake:
    "predict(image) -> (boxes, scores, cls), fixed."
    def __init__(self, boxes, scores, cls): self.out = (np.array(boxes, np.float32).reshape(-1, 4), np.array(scores), np.array(cls))
    def predict(self, image): return self.out


class FakeWithConf(Fake):
    "Like synthkit.detect.Detector: takes conf= and filters itself."
    def predict(self, image, conf=None):
        self.asked = conf
        b, s, c = self.out
        return b[s >= conf], s[s >= conf], c[s >= conf]


@pytest.mark.parametrize('found,recall,keep', [(3, 1.0, True), (2, 2 / 3, False), (0, 0.0, False)])
def test_recall_threshold(found, recall, keep):
    v = LabelCheck(Fake(SRC[:found] + 1, [0.9] * found, CLS[:found]), recall=0.8)(IMG, SRC, CLS)
    assert isinstance(v, LabelVerdict) and v.keep == keep and v.recall == pytest.approx(recall) and v.matched == found
    assert np.array_equal(v.boxes, SRC) and np.array_equal(v.cls, CLS)


def test_iou_and_conf_thresholds():
    shifted = SRC + np.array([4, 0, 4, 0], np.float32)   # IoU 6/14 = 0.43 for the 10 px wide boxes, 16/24 = 0.67 for the 20 px one
    assert LabelCheck(Fake(shifted, [0.9] * 3, CLS), iou=0.5)(IMG, SRC, CLS).matched == 1
    assert LabelCheck(Fake(shifted, [0.9] * 3, CLS), iou=0.4)(IMG, SRC, CLS).matched == 3
    assert LabelCheck(Fake(SRC, [0.9, 0.9, 0.2], CLS), conf=0.25)(IMG, SRC, CLS).matched == 2
    d = FakeWithConf(SRC, np.array([0.9, 0.9, 0.2]), CLS)
    assert LabelCheck(d, conf=0.1)(IMG, SRC, CLS).matched == 3 and d.asked == 0.1


def test_wrong_class_does_not_match():
    v = LabelCheck(Fake(SRC, [0.9] * 3, [0, 0, 0]), recall=1.0)(IMG, SRC, CLS)
    assert not v.keep and v.matched == 2
    assert LabelCheck(Fake(SRC, [0.9] * 3, [0, 0, 0]), recall=1.0, class_aware=False)(IMG, SRC, CLS).keep


def test_relabel_keeps_matched_source_boxes_and_adds_new_ones():
    lc = LabelCheck(Fake([SRC[0] + 1, [40, 5, 60, 20]], [0.9, 0.8], [0, 1]), mode='relabel')
    v = lc(IMG, SRC, CLS)
    assert v.keep and v.relabelled and v.boxes.tolist() == [SRC[0].tolist(), [40, 5, 60, 20]] and v.cls.tolist() == [0, 1]
    assert '2 source boxes removed, 1 detections added' in v.reason
    ok = LabelCheck(Fake(SRC, [0.9] * 3, CLS), mode='relabel')(IMG, SRC, CLS)
    assert ok.keep and not ok.relabelled and np.array_equal(ok.boxes, SRC)
    assert lc.summary() == {'kept': 0, 'relabelled': 1, 'dropped': 0}


def test_background_images():
    empty = np.zeros((0, 4), np.float32)
    assert LabelCheck(Fake(empty, [], []))(IMG, empty, []).keep                      # nothing to find, nothing found
    ship = Fake([[1, 1, 9, 9]], [0.9], [0])
    assert LabelCheck(ship)(IMG, empty, []).keep                                     # recall only: extras ignored
    assert not LabelCheck(ship, precision=0.5)(IMG, empty, []).keep                  # a ship appeared
    v = LabelCheck(ship, precision=0.5, mode='relabel')(IMG, empty, [])
    assert v.keep and v.boxes.tolist() == [[1, 1, 9, 9]]


def test_match_is_one_to_one():
    # two detections on one source box: only one can match it
    assert match_boxes([[0, 0, 10, 10]], [0], [[0, 0, 10, 10], [1, 0, 10, 10]], [0, 0]) == [(0, 0)]


def test_errors():
    with pytest.raises(SynthkitError, match='has no predict'): LabelCheck(object())
    with pytest.raises(SynthkitError, match='recall=1.5 is outside'): LabelCheck(Fake([], [], []), recall=1.5)
    with pytest.raises(SynthkitError, match='iou=-0.1 is outside'): LabelCheck(Fake([], [], []), iou=-0.1)
    with pytest.raises(SynthkitError, match="mode='keep' is not one of"): LabelCheck(Fake([], [], []), mode='keep')

    class Bad:
        def predict(self, image): return None
    with pytest.raises(SynthkitError, match='must return'): LabelCheck(Bad())(IMG, SRC, CLS)


def test_plugs_into_synthesize(tmp_path):
    synth = pytest.importorskip('synthkit.synthesize', reason='synthkit.synthesize (nbs/13) is not there yet')
    from synthkit.augment import ClassicGenerator
    from synthkit.data.items import Item, Dataset
    from synthkit.generators import GenParams
    from synthkit.images import save_image
    items = [Item(save_image(np.full((32, 32), 50 + 30 * i, np.uint8), tmp_path / f's{i}.png'), 32, 32, [[4, 4, 12, 12]], [0], f's{i}')
             for i in range(3)]

    class SeesBrightShips:
        "Finds the source box only in images brighter than 60 on average (s1, s2), else nothing."
        def predict(self, image):
            if image.mean() > 60: return np.array([[4, 4, 12, 12]], np.float32), np.array([0.9]), np.array([0])
            return np.zeros((0, 4), np.float32), np.zeros(0), np.zeros(0, int)

    lc = LabelCheck(SeesBrightShips())
    s = synth.synthesize(Dataset(items, ['ship']), ClassicGenerator(turns=False, flips=False, looks=None), 2, GenParams(seed=0),
                         tmp_path / 'out', label_check=lc, progress=False)
    assert s.written == 4 and s.dropped == 2 and lc.summary() == {'kept': 4, 'relabelled': 0, 'dropped': 2}
