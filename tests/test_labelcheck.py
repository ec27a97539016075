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


# --- pasted ships (issue 18 point 4): each must be found ------------------------------------------------------------

PASTED = np.concatenate([SRC, [[40, 44, 56, 52]]]).astype(np.float32)   # the source's three boxes and one pasted ship
PASTED_CLS = np.array([0, 0, 1, 0])
INFO = {'paste': {'asked': 1, 'placed': 1, 'pasted': [3]}}


def test_a_pasted_ship_must_be_found():
    finds_all = Fake(PASTED + 1, [0.9] * 4, PASTED_CLS)
    v = LabelCheck(finds_all)(IMG, PASTED, PASTED_CLS, info=INFO)
    assert v.keep and v.pasted == 1 and v.pasted_found == 1 and '1 of 1 pasted ships found (need all, IoU ≥ 0.50)' in v.reason
    misses = Fake(PASTED[:3], [0.9] * 3, PASTED_CLS[:3])                 # recall 3/4 ≥ 0.7, but the pasted ship is not found
    lc = LabelCheck(misses, recall=0.7)
    v = lc(IMG, PASTED, PASTED_CLS, info=INFO)
    assert not v.keep and v.recall == 0.75 and v.pasted == 1 and v.pasted_found == 0
    assert v.reason.startswith('dropped: 3 of 4 source boxes found') and v.reason.endswith('0 of 1 pasted ships found (need all, IoU ≥ 0.50), missed: box 3')
    assert lc.summary() == {'kept': 0, 'relabelled': 0, 'dropped': 1}
    loose = Fake(np.concatenate([PASTED[:3], [[44, 44, 60, 52]]]), [0.9] * 4, PASTED_CLS)   # IoU 12/20 = 0.6 with the pasted box
    assert LabelCheck(loose, recall=0.7)(IMG, PASTED, PASTED_CLS, info=INFO).keep
    assert not LabelCheck(loose, recall=0.7, iou=0.7)(IMG, PASTED, PASTED_CLS, info=INFO).keep
    wrong = Fake(PASTED, [0.9] * 4, [0, 0, 1, 1])                        # found, but as another class
    assert not LabelCheck(wrong, recall=0.7)(IMG, PASTED, PASTED_CLS, info=INFO).keep
    # no info (every other generator), or pasted=False: the check as it always was
    assert lc(IMG, PASTED, PASTED_CLS).keep and lc(IMG, PASTED, PASTED_CLS, info={}).keep and lc(IMG, PASTED, PASTED_CLS, info=None).keep
    assert LabelCheck(misses, recall=0.7, pasted=False)(IMG, PASTED, PASTED_CLS, info=INFO).keep
    assert 'pasted' not in lc(IMG, PASTED, PASTED_CLS).reason and lc(IMG, PASTED, PASTED_CLS).pasted == 0
    # a manifest record names the pasted boxes the same way
    assert not lc(IMG, PASTED, PASTED_CLS, info=dict(source='s', k=0, boxes=PASTED.tolist(), **INFO)).keep


def test_relabel_never_removes_a_pasted_box():
    "Relabelling removes boxes the detector misses; a missed pasted ship is in the pixels, so the output is dropped instead."
    misses = Fake(PASTED[:2], [0.9] * 2, PASTED_CLS[:2])
    v = LabelCheck(misses, mode='relabel')(IMG, PASTED, PASTED_CLS, info=INFO)
    assert not v.keep and not v.relabelled and 'missed: box 3' in v.reason
    finds_pasted = Fake(PASTED[[0, 3]], [0.9] * 2, PASTED_CLS[[0, 3]])  # two source ships gone, the pasted one found
    v = LabelCheck(finds_pasted, mode='relabel')(IMG, PASTED, PASTED_CLS, info=INFO)
    assert v.keep and v.relabelled and v.boxes.tolist() == PASTED[[0, 3]].tolist() and v.pasted_found == 1


def test_pasted_info_errors():
    with pytest.raises(SynthkitError, match='names pasted box 3 but the output has 3 boxes'):
        LabelCheck(Fake(SRC, [0.9] * 3, CLS))(IMG, SRC, CLS, info=INFO)
    with pytest.raises(SynthkitError, match='info of type list is not a dict'):
        LabelCheck(Fake(SRC, [0.9] * 3, CLS))(IMG, SRC, CLS, info=[3])
    with pytest.raises(SynthkitError, match="pasted='yes' is not True or False"): LabelCheck(Fake([], [], []), pasted='yes')


def _sea_toy(folder, n=4, h=48, w=96):
    "Dark sea, one flat bright ship (value 220) in the left half of each image; all training images."
    from synthkit.data.items import Item, Dataset
    from synthkit.images import save_image
    rng, items = np.random.default_rng(0), []
    for i in range(n):
        a = np.clip(rng.gamma(4.0, 8.0, (h, w)), 0, 120)
        x, y = 6 + 2 * i, 8 + 3 * i
        a[y:y + 5, x:x + 12] = 220
        items.append(Item(save_image(a.astype(np.uint8), folder / f's{i}.png'), w, h, [[x, y, x + 12, y + 5]], [0], f's{i}', {'split': 'train'}))
    return Dataset(items, ['ship'], root=folder)


class LeftHalf:
    "Finds every bright blob (> 150) whose box lies in the left half of the image: pasted ships further right are missed."
    def predict(self, image):
        from scipy import ndimage
        lab, _ = ndimage.label(np.asarray(image) > 150)
        b = np.array([[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in ndimage.find_objects(lab)], np.float32).reshape(-1, 4)
        b = b[b[:, 2] <= image.shape[1] / 2]
        return b, np.full(len(b), 0.9, np.float32), np.zeros(len(b), np.int64)


def test_synthesize_drops_an_output_whose_pasted_ship_is_not_found_and_another_is_drawn(tmp_path):
    "synthesize passes each output's info to the check; a dropped output is listed in rejected.jsonl, and asking for more draws new ones."
    from synthkit.generators import GenParams
    from synthkit.paste import CropBank, PasteGenerator
    from synthkit.synthesize import synthesize, Manifest, REJECTED
    ds = _sea_toy(tmp_path / 'toy')
    gen = PasteGenerator(CropBank.from_dataset(ds), k=1, scale=1.0, sea_tolerance=None)
    lc = LabelCheck(LeftHalf())
    s = synthesize(ds, gen, 6, GenParams(seed=0), tmp_path / 'out', label_check=lc, progress=False)
    kept, rejected = Manifest(tmp_path / 'out').read(), Manifest(tmp_path / 'out' / REJECTED).read()
    assert s.checked == 24 and s.written == len(kept) and s.dropped == len(rejected) and kept and rejected
    for r in kept:
        assert r['paste']['placed'] == 1 and r['boxes'][r['paste']['pasted'][0]][2] <= 48             # the pasted ship in the left half
        assert r['label_check']['keep'] and '1 of 1 pasted ships found' in r['label_check']['reason']
    for r in rejected:
        assert r['paste']['windows'][0][2] > 48 + 4 and r['label_check']['reason'].startswith('dropped: 1 of 2 source boxes found')
        assert r['label_check']['reason'].endswith('0 of 1 pasted ships found (need all, IoU ≥ 0.50), missed: box 1')
    # the grid refills the same way: ask for more outputs, get new ones drawn and checked; the dropped are not made again
    more = synthesize(ds, gen, 12, GenParams(seed=0), tmp_path / 'out', label_check=lc, progress=False)
    assert more.skipped == 24 and more.checked == 24 and more.written > 0
    keys = {(r['source'], r['k']) for r in Manifest(tmp_path / 'out').read()}
    assert {(r['source'], r['k']) for r in rejected}.isdisjoint(keys) and any(k >= 6 for _, k in keys)
    # a plain (image, boxes, cls) check, without info=, is called as before
    seen = []
    def plain(image, boxes, cls):
        from types import SimpleNamespace as NS
        seen.append(len(boxes)); return NS(keep=True, boxes=boxes, cls=cls, reason='ok')
    assert synthesize(ds, gen, 1, GenParams(seed=0), tmp_path / 'plain', label_check=plain, progress=False).written == 4 and seen == [2] * 4
