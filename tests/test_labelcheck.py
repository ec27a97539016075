"Label check with fake detectors: keep / drop / relabel, thresholds, empty images, errors."
import numpy as np
import pytest

from synthkit.errors import SynthkitError
from synthkit.labelcheck import LabelCheck, LabelVerdict, match_boxes, unlabelled_detections, detections

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
    with pytest.raises(SynthkitError, match='hallucination_conf=1.5 is outside'): LabelCheck(Fake([], [], []), hallucination_conf=1.5)
    with pytest.raises(SynthkitError, match="hallucination_iou='x' is outside"): LabelCheck(Fake([], [], []), hallucination_iou='x')

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


SEA_SHIP = [[40, 2, 60, 12]]   # far from every SRC box


def test_unlabelled_detections():
    dets = np.concatenate([SRC + 1, SEA_SHIP, [[0, 50, 4, 54]]])
    assert unlabelled_detections(SRC, dets, [0.9, 0.9, 0.9, 0.8, 0.2]).tolist() == [3]
    assert unlabelled_detections(SRC, dets, [0.9, 0.9, 0.9, 0.8, 0.2], conf=0.1).tolist() == [3, 4]
    assert unlabelled_detections(SRC, SRC + [3, 0, 3, 0], [0.9] * 3, iou=0.3).tolist() == []       # shifted boxes still overlap
    assert unlabelled_detections(np.zeros((0, 4)), SEA_SHIP, [0.9]).tolist() == [0]
    b, s, c = detections(FakeWithConf(dets, np.array([0.9, 0.9, 0.9, 0.8, 0.2]), [0] * 5), IMG, conf=0.5)
    assert len(b) == len(s) == len(c) == 4


def test_hallucination_check():
    seen = Fake(np.concatenate([SRC, SEA_SHIP]), [0.9, 0.9, 0.9, 0.7], list(CLS) + [0])
    assert LabelCheck(seen)(IMG, SRC, CLS).keep                                    # off by default: the old behaviour
    lc = LabelCheck(seen, hallucination_conf=0.5)
    v = lc(IMG, SRC, CLS)
    assert not v.keep and v.recall == 1 and v.hallucinated == 1 and v.n_detections == 4
    assert v.reason.startswith('dropped: 3 of 3 source boxes found') and '1 confident detection(s) where no box is' in v.reason
    assert lc.summary() == {'kept': 0, 'relabelled': 0, 'dropped': 1}
    assert LabelCheck(seen, hallucination_conf=0.8)(IMG, SRC, CLS).keep           # 0.7 is not sure enough
    assert LabelCheck(seen, hallucination_conf=0.5, hallucination_iou=0.0)(IMG, SRC, CLS).keep   # iou 0: nothing is "away"
    r = LabelCheck(seen, hallucination_conf=0.5, mode='relabel')(IMG, SRC, CLS)
    assert r.keep and r.relabelled and r.boxes.tolist() == SRC.tolist() + SEA_SHIP and r.cls.tolist() == list(CLS) + [0]
    # a detection below conf but above hallucination_conf still counts as a hallucination, and not for recall / precision
    d = FakeWithConf(np.concatenate([SRC, SEA_SHIP]), np.array([0.9, 0.9, 0.9, 0.2]), list(CLS) + [0])
    v = LabelCheck(d, conf=0.25, hallucination_conf=0.1, precision=1.0)(IMG, SRC, CLS)
    assert d.asked == 0.1 and v.hallucinated == 1 and v.n_detections == 3 and 'precision 1.00' in v.reason and not v.keep


class BrightBlobs:
    "A perfect detector for synthkit.testing's toy images: connected pixels whose 3×3 mean is > 150 (≥ 6 of them), score 0.9."
    def predict(self, image):
        from scipy import ndimage
        lab, _ = ndimage.label(ndimage.uniform_filter(np.asarray(image, np.float32), 3) > 150)
        found = [s for s in ndimage.find_objects(lab) if (lab[s] > 0).sum() >= 6]
        b = np.array([[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in found], np.float32).reshape(-1, 4)
        return b, np.full(len(b), 0.9, np.float32), np.zeros(len(b), np.int64)


def test_planted_unlabelled_ship_is_dropped(tmp_path):
    from synthkit.testing import toy_dataset
    from synthkit.data.formats import load_dataset
    toy = load_dataset(toy_dataset(tmp_path / 'toy', n=12, size=64, seed=3))
    lc = LabelCheck(BrightBlobs(), hallucination_conf=0.5)
    verdicts = [lc(it.read(), it.boxes, it.cls) for it in toy]
    assert not any(v.hallucinated for v in verdicts)                     # complete labels: nothing where no box is
    two = [it for it, v in zip(toy, verdicts) if it.n_boxes == 2 and v.keep]
    assert two, 'the toy set has a clean image with two separate ships'
    clean, planted = lc(two[0].read(), two[0].boxes, two[0].cls), lc(two[0].read(), two[0].boxes[:1], two[0].cls[:1])
    assert clean.keep and clean.hallucinated == 0
    assert not planted.keep and planted.hallucinated == 1 and planted.recall == 1 and 'where no box is' in planted.reason
