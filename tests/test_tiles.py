"""synthkit.data.tiles: windows, the border rule for boxes, edges, images smaller than a tile, and the written dataset."""
from pathlib import Path

import numpy as np
import pytest

from synthkit.errors import SynthkitError
from synthkit.data.items import Item, Dataset
from synthkit.data.tiles import Tiling, tile_origins, tile_windows, crop_boxes, tile_item, tile_dataset, check_tiling, native_imgsz


def item(w, h, boxes, id_='img'):
    return Item(Path(f'{id_}.png'), w, h, np.array(boxes, np.float32).reshape(-1, 4), np.zeros(len(boxes), np.int64), id_)


@pytest.mark.parametrize('n', [160, 161, 200, 319, 320, 500, 531, 1024])
def test_windows_cover_every_pixel_and_overlap(n):
    o = tile_origins(n, 160, 32)
    assert o[0] == 0 and o[-1] + 160 == n                      # flush with both borders: edge tiles never leave the image
    assert all(32 <= a + 160 - b for a, b in zip(o, o[1:]))     # neighbours overlap by at least `overlap`
    assert o == sorted(set(o))


def test_box_across_a_tile_border_kept_only_when_half_inside():
    it = item(300, 160, [[130, 10, 170, 30],    # 30 of 40 px inside the first tile: kept there, clipped
                         [150, 60, 190, 80]])   # 10 of 40 px inside the first tile: dropped there
    tiles = {t[0]: t for t in tile_item(it, Tiling(overlap=0), image=np.zeros((160, 300), np.uint8))}
    assert list(tiles) == ['img@x0y0', 'img@x140y0']
    b, c = tiles['img@x0y0'][2:4]
    assert b.tolist() == [[130, 10, 160, 30]] and c.tolist() == [0]
    b2 = tiles['img@x140y0'][2]                                 # the second tile (x 140-300) holds the second box whole
    assert [150 - 140, 60, 190 - 140, 80] in b2.tolist() and [0, 10, 30, 30] in b2.tolist()


def test_min_visible_is_the_stated_threshold():
    b = np.array([[150, 0, 170, 10]], np.float32)               # exactly half inside (0, 0, 160, 160)
    assert len(crop_boxes(b, [0], (0, 0, 160, 160), 0.5)[0]) == 1
    assert len(crop_boxes(b, [0], (0, 0, 160, 160), 0.51)[0]) == 0


def test_image_smaller_than_a_tile_is_padded_not_enlarged():
    a = np.full((50, 90), 7, np.uint8); a[10:20, 10:30] = 200
    it = item(90, 50, [[10, 10, 30, 20]])
    (tid, t, b, c, w), = tile_item(it, Tiling(size=96, overlap=16), image=a)
    assert t.shape == (96, 96) and (t[:50, :90] == a).all() and t[60, 5] == 7 and t[5, 93] == 7     # pad = the image's median
    assert b.tolist() == [[10, 10, 30, 20]]                     # native scale: boxes don't move
    rgb = np.dstack([a, a // 2, a]); t3 = tile_item(it, Tiling(size=96, overlap=16), image=rgb)[0][1]
    assert t3.shape == (96, 96, 3) and t3[60, 5].tolist() == [7, 3, 7]


def test_edge_tiles_and_empty_tiles():
    it = item(400, 300, [[380, 280, 399, 299]])                 # a ship in the bottom-right corner
    tiles = tile_item(it, Tiling(), image=np.zeros((300, 400), np.uint8))
    last = tiles[-1]
    assert last[4] == (240, 140, 400, 300) and last[2].tolist() == [[140, 140, 159, 159]]
    kept = tile_item(it, Tiling(keep_empty=0.0), image=np.zeros((300, 400), np.uint8))
    assert [t[0] for t in kept] == ['img@x240y140']            # only the tile with the ship
    some = tile_item(it, Tiling(keep_empty=0.5), image=np.zeros((300, 400), np.uint8))
    again = tile_item(it, Tiling(keep_empty=0.5), image=np.zeros((300, 400), np.uint8))
    assert 1 < len(some) < len(tiles) and [t[0] for t in some] == [t[0] for t in again]     # drawn from the tile id: reproducible


def test_tile_dataset_writes_a_yolo_folder(tmp_path):
    from synthkit.images import save_image
    from synthkit.data.formats import load_dataset
    a = np.zeros((120, 200), np.uint8); a[20:40, 150:190] = 255
    p = save_image(a, tmp_path/'src'/'sub__x.png')
    ds = Dataset([Item(p, 200, 120, [[150, 20, 190, 40]], [0], 'sub/x')], ['ship'])
    td = tile_dataset(ds, tmp_path/'tiles', Tiling(size=96, overlap=32))
    assert [it.id for it in td] == ['sub/x@x0y0', 'sub/x@x52y0', 'sub/x@x104y0', 'sub/x@x0y24', 'sub/x@x52y24', 'sub/x@x104y24']
    assert all(it.meta['source'] == 'sub/x' and it.path.name.startswith('sub__x@') for it in td)
    back = load_dataset(tmp_path/'tiles')
    assert len(back) == 6 and sum(it.n_boxes for it in back) == td.n_boxes


def test_bad_tilings_are_one_clear_error():
    ds = Dataset([item(100, 80, [[1, 1, 5, 5]])], ['ship'])
    with pytest.raises(SynthkitError, match='tile size 160 px is larger than every image .*largest side is 100 px'):
        check_tiling(ds, Tiling())
    for bad, msg in [(dict(size=16), 'tile size=16'), (dict(overlap=160), 'tile overlap=160'), (dict(min_visible=0), 'min_visible=0'),
                     (dict(keep_empty=2), 'keep_empty=2')]:
        with pytest.raises(SynthkitError, match=msg): Tiling(**bad).check()


def test_native_imgsz():
    assert native_imgsz([(500, 350), (531, 478)]) == 544
    assert native_imgsz(Dataset([item(320, 200, [])], ['ship'])) == 320
