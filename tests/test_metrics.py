"Image-quality metrics: hand-computable SSIM/PSNR, FID/KID mechanics with a tiny random extractor, errors, manifests."
import json, math

import numpy as np
import pytest
import torch

from synthkit.errors import SynthkitError
from synthkit.metrics import fidelity, diversity, FeatureExtractor, distribution_distance, quality_report


def test_psnr_of_a_known_error_16bit():
    src = np.zeros((16, 16), np.uint16); src[:, 8:] = 1000      # scale 0..1000
    var = src.copy(); var[:, :8] = 100                           # error 0.1 on half the pixels: MSE 0.005
    f = fidelity(src, [var])
    assert abs(f['psnr'] - 10 * math.log10(1 / 0.005)) < 1e-4 and f['n'] == 1


def test_grey_rgb_source_compares_as_grey():
    g = np.random.default_rng(0).integers(0, 256, (20, 20), dtype=np.uint8)
    rgb = np.repeat(g[..., None], 3, 2)
    assert abs(fidelity(rgb, [g])['ssim'] - 1) < 1e-9


def test_fid_kid_mechanics_and_reproducible():
    ex = FeatureExtractor.random(1, width=8, size=32)
    r = np.random.default_rng(0)
    A = [r.integers(0, 120, (24, 24), dtype=np.uint8) for _ in range(16)]
    B = [r.integers(100, 255, (24, 24), dtype=np.uint8) for _ in range(16)]
    d0 = distribution_distance(A[:8], A[8:], ex, kid_subset=6, kid_subsets=10)
    d1 = distribution_distance(A[:8], B[:8], ex, kid_subset=6, kid_subsets=10)
    assert d1['fid'] > d0['fid'] and d1['kid_mean'] > d0['kid_mean']
    assert d1 == distribution_distance(A[:8], B[:8], ex, kid_subset=6, kid_subsets=10)
    assert set(d1) >= {'fid', 'kid_mean', 'kid_std'}


def test_errors():
    ex = FeatureExtractor.random(0, width=4, size=16)
    im = [np.random.default_rng(i).integers(0, 255, (8, 8), dtype=np.uint8) for i in range(3)]
    with pytest.raises(SynthkitError, match='at least 2 of each'): distribution_distance(im[:1], im, ex)
    with pytest.raises(SynthkitError, match='kid_subset=9'): distribution_distance(im, im, ex, kid_subset=9)
    with pytest.raises(SynthkitError, match='not a torch module'): distribution_distance(im, im, 'inception')
    with pytest.raises(SynthkitError, match="weights file 'nope.pth' not found"): FeatureExtractor.from_torchvision('resnet18', 'nope.pth')
    with pytest.raises(SynthkitError, match="unknown torchvision model 'resnet9000'"): FeatureExtractor.from_torchvision('resnet9000', 'x')
    with pytest.raises(SynthkitError, match='not found'): FeatureExtractor.from_yolo('missing/best.pt')
    with pytest.raises(SynthkitError, match='is not a YOLO detector'): FeatureExtractor.from_yolo(object())


def test_torchvision_from_a_local_file(tmp_path):
    import torchvision
    from safetensors.torch import save_file
    net = torchvision.models.resnet18(weights=None, num_classes=1000)
    save_file(net.state_dict(), str(tmp_path / 'r18.safetensors'))
    ex = FeatureExtractor.from_torchvision('resnet18', tmp_path / 'r18.safetensors', size=32)
    assert ex.num_features == 512 and ex.features([np.zeros((20, 20), np.uint8)]).shape == (1, 512)
    (tmp_path / 'bad.pth').write_bytes(b'junk')
    with pytest.raises(SynthkitError, match='could not load resnet18 weights'):
        FeatureExtractor.from_torchvision('resnet18', tmp_path / 'bad.pth')


def test_quality_report_from_manifest(tmp_path):
    from synthkit.data.items import Item, Dataset
    from synthkit.images import save_image
    r = np.random.default_rng(0); items = []
    with open(tmp_path / 'manifest.jsonl', 'w') as fh:
        for i in range(3):
            src = r.integers(0, 255, (24, 24), dtype=np.uint8)
            items.append(Item(save_image(src, tmp_path / f's{i}.png'), 24, 24, [], [], f's{i}'))
            for k, strength in enumerate((0.2, 0.2, 0.6, 0.6)):
                v = np.clip(src + r.normal(0, 100 * strength, src.shape), 0, 255).astype(np.uint8)
                save_image(v, tmp_path / 'images' / f's{i}_{k}.png')
                fh.write(json.dumps(dict(source_id=f's{i}', path=f'images/s{i}_{k}.png', generator='ddpm', strength=strength)) + '\n')
    rows = quality_report(Dataset(items, ['ship']), tmp_path)
    assert [(x['generator'], x['strength'], x['n_images']) for x in rows] == [('ddpm', 0.2, 6), ('ddpm', 0.6, 6)]
    assert rows[0]['ssim'] > rows[1]['ssim'] and rows[0]['diversity'] < rows[1]['diversity'] and 'fid' not in rows[0]
    with pytest.raises(SynthkitError, match="source image 's0' of a variation is not in the real dataset"):
        quality_report(Dataset(items[1:], ['ship']), tmp_path)
    (tmp_path / 'bad.jsonl').write_text('{"source_id": "s0"\n')
    with pytest.raises(SynthkitError, match=r'bad.jsonl:1: bad JSON'): quality_report(Dataset(items, ['ship']), tmp_path / 'bad.jsonl')


def test_classic_copies_are_aligned_before_comparing():
    from synthkit.augment import ClassicGenerator
    src = np.random.default_rng(3).integers(0, 255, (30, 44), dtype=np.uint8)
    outs = ClassicGenerator(looks=None).generate(src, n=8, source_id='s')
    assert {o.shape for o in outs} == {(30, 44), (44, 30)}
    f = fidelity(src, outs)
    assert f['n'] == 8 and f['ssim'] > 1 - 1e-9 and abs(diversity(outs)) < 1e-9
    speckled = ClassicGenerator(looks=4).generate(src, n=4, source_id='s')
    assert fidelity(src, speckled)['ssim'] < 0.9 and diversity(speckled) > 0.1


def test_constant_features_are_refused():
    class Zero(torch.nn.Module):
        def forward(self, x): return torch.zeros(len(x), 4)
    im = [np.random.default_rng(i).integers(0, 255, (8, 8), dtype=np.uint8) for i in range(3)]
    with pytest.raises(SynthkitError, match='nearly\\) the same features for every real image'):
        distribution_distance(im, im, Zero())
