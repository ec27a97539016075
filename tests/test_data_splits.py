"""Deterministic, nested case-study splits (synthkit.data.splits)."""
import hashlib

import pytest

from synthkit.errors import SynthkitError
from synthkit.data.splits import SPLIT_SIZES, Split, make_splits, hash_order

IDS = [f'{i:06d}' for i in range(5, 1500, 5)]   # 299 ssdd-like ids


def _disjoint(s: Split):
    return not (set(s.train) & set(s.val) or set(s.train) & set(s.test) or set(s.val) & set(s.test))


@pytest.mark.parametrize('seed', [0, 1, 7, 2**40])
def test_sizes_disjoint_same_test_and_nested(seed):
    sp = make_splits(IDS, seed)
    s1, s2 = sp['split_1'], sp['split_2']
    assert SPLIT_SIZES == {'split_1': (80, 20, 100), 'split_2': (40, 20, 100)}
    assert (len(s1.train), len(s1.val), len(s1.test)) == (80, 20, 100) and (len(s2.train), len(s2.val), len(s2.test)) == (40, 20, 100)
    assert _disjoint(s1) and _disjoint(s2) and s1.test == s2.test and s1.val == s2.val and s2.train == s1.train[:40]
    assert s1.seed == seed and s1.name == 'split_1' and set(s1.parts) == {'train', 'val', 'test'}


def test_depends_only_on_seed_and_ids():
    a = make_splits(IDS, 3)
    assert make_splits(list(reversed(IDS)), 3) == a
    assert make_splits(IDS, 4)['split_1'].test != a['split_1'].test


def test_stable_across_machines_and_versions():
    # sha256 of 'seed:id' is fixed by definition: these values must never change
    key = lambda i: hashlib.sha256(f'0:{i}'.encode()).hexdigest()
    assert hash_order(IDS, 0) == sorted(IDS, key=key)
    assert make_splits(IDS, 0)['split_1'].test[:3] == sorted(IDS, key=key)[:3]
    assert hash_order(['a', 'b', 'c', 'd'], 0) == ['d', 'a', 'c', 'b']


def test_adding_images_keeps_most_of_the_test_set():
    old = set(make_splits(IDS[:250], 0)['split_1'].test)
    new = set(make_splits(IDS, 0)['split_1'].test)
    assert len(old & new) >= 75


def test_dataset_too_small_says_what_is_needed():
    with pytest.raises(SynthkitError) as e: make_splits(IDS[:150], 0)
    m = str(e.value)
    assert 'the splits need 200 images (80 train + 20 val + 100 test' in m and 'has 150' in m
    assert "sizes={'split_1': (60, 15, 75), 'split_2': (30, 15, 75)}" in m
    small = make_splits(IDS[:150], 0, sizes={'split_1': (60, 15, 75), 'split_2': (30, 15, 75)})
    assert len(small['split_1'].train) == 60


@pytest.mark.parametrize('sizes,match', [({}, 'sizes='), ({'s': (1, 2)}, r"sizes\['s'\]=\(1, 2\) is not \(train, val, test\)"),
                                          ({'s': (1, -2, 3)}, 'whole numbers')])
def test_bad_sizes_and_seed(sizes, match):
    with pytest.raises(SynthkitError, match=match): make_splits(IDS, 0, sizes=sizes)


def test_bad_seed_and_duplicate_ids():
    with pytest.raises(SynthkitError, match='seed=-1'): make_splits(IDS, -1)
    with pytest.raises(SynthkitError, match='duplicate ids'): make_splits(IDS + IDS[:1], 0)


def test_on_ssdd_dev(ssdd_dev):
    from synthkit.data.formats import load_dataset
    ds = load_dataset(ssdd_dev, check_pixels=False)
    sp = make_splits(ds, seed=0)
    assert all(i in ds for s in sp.values() for part in s.parts.values() for i in part)
    assert len(set(sp['split_1'].train + sp['split_1'].val + sp['split_1'].test)) == 200
