"""Known-answer tests of `replibook.metrics.image`, and agreement with scikit-image."""
import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from replibook.metrics.image import gaussian_window, l1, psnr, ssim


def _images(n=3, c=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(n, c, size, size, generator=g)
    noisy = (clean + 0.1 * torch.randn(n, c, size, size, generator=g)).clamp(0, 1)
    return noisy, clean


def test_psnr_known_answer():
    target = torch.zeros(1, 1, 4, 4)
    pred = torch.full((1, 1, 4, 4), 0.1)            # MSE = 0.01 -> 10 log10(1 / 0.01) = 20 dB
    assert psnr(pred, target) == pytest.approx(20.0, abs=1e-5)
    assert psnr(pred * 255, target, data_range=255.0) == pytest.approx(20.0, abs=1e-4)
    assert math.isinf(psnr(target, target))


def test_psnr_per_image_matches_skimage():
    pred, target = _images()
    ours = psnr(pred, target, reduction="none")
    assert ours.shape == (3,)
    for i in range(3):
        ref = peak_signal_noise_ratio(target[i].numpy(), pred[i].numpy(), data_range=1.0)
        assert float(ours[i]) == pytest.approx(ref, abs=1e-4)
    assert psnr(pred, target) == pytest.approx(float(ours.mean()), abs=1e-6)


def test_ssim_of_identical_images_is_one_and_of_noise_is_lower():
    pred, target = _images()
    assert ssim(target, target) == pytest.approx(1.0, abs=1e-6)
    assert ssim(pred, target) < 0.99
    g = torch.Generator().manual_seed(1)
    noisier = (target + 0.3 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    assert ssim(noisier, target) < ssim(pred, target)           # more noise, lower SSIM
    # an image against its negative: structure anti-correlated -> negative SSIM
    assert ssim(1 - target, target) < 0


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_skimage_gaussian_settings(channels):
    pred, target = _images(n=2, c=channels, size=40, seed=channels)
    ours = ssim(pred, target, reduction="none")
    for i in range(2):
        ref = structural_similarity(target[i].numpy(), pred[i].numpy(), data_range=1.0,
                                    gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, channel_axis=0)
        assert float(ours[i]) == pytest.approx(ref, abs=1e-4)


def test_ssim_single_image_and_bad_shapes():
    pred, target = _images(n=1)
    assert ssim(pred[0], target[0]) == pytest.approx(ssim(pred, target), abs=1e-7)
    with pytest.raises(ValueError, match="differ"):
        ssim(pred, target[:, :1])
    with pytest.raises(ValueError, match="smaller"):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


def test_gaussian_window_is_normalised_and_symmetric():
    w = gaussian_window(11, 1.5)
    assert w.shape == (11, 11)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(w, w.t()) and torch.allclose(w, w.flip(0))
    assert int(w.argmax()) == 5 * 11 + 5


def test_l1_known_answers_with_and_without_mask():
    target = torch.zeros(2, 3, 4, 4)
    pred = torch.zeros(2, 3, 4, 4)
    pred[:, :, :2] = 0.5                                        # top half off by 0.5
    assert l1(pred, target) == pytest.approx(0.25)
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, :2] = 1
    assert l1(pred, target, mask) == pytest.approx(0.5)          # only the erroneous half
    assert l1(pred, target, 1 - mask) == pytest.approx(0.0)
    per = l1(pred, target, torch.cat([mask[:1], torch.zeros(1, 1, 4, 4)]), reduction="none")
    assert float(per[0]) == pytest.approx(0.5) and math.isnan(float(per[1]))
    np.testing.assert_allclose(l1(pred, target, reduction="none").numpy(), [0.25, 0.25])
    with pytest.raises(ValueError, match="reduction"):
        l1(pred, target, reduction="sum")
