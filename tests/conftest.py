"""Shared pytest fixtures. Tests never touch the network: the package applies the offline settings itself."""
import os
from pathlib import Path

import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('YOLO_OFFLINE', 'true')

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='session')
def ssdd_dev() -> Path:
    "The real SAR development set (Pascal VOC), or skip: users of the package don't have it."
    from synthkit.data.items import find_dev_data
    p = find_dev_data('ssdd-dev')
    if p is None:
        pytest.skip('real SAR data ../shared/data/ssdd-dev is absent (set SYNTHKIT_DEV_DATA to point at it)')
    return p


@pytest.fixture
def ds(tmp_path):
    "Three 64 × 48 8-bit images with one bright ship each, under `tmp_path/data` (the panels' tests: tests/test_tuning.py, tests/test_casestudy_panel.py)."
    import numpy as np
    from synthkit.data.items import Dataset, Item
    from synthkit.images import save_image
    rng, items = np.random.default_rng(0), []
    for i in range(3):
        a = rng.integers(0, 80, (48, 64), dtype=np.uint8)
        a[10:16, 20:34] = 220
        p = save_image(a, tmp_path / 'data' / f'img{i}.png')
        items.append(Item(p, 64, 48, [[20, 10, 34, 16]], [0], f'img{i}'))
    return Dataset(items, ['ship'], root=tmp_path / 'data')
