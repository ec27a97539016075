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
