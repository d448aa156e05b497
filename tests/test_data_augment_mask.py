"""Tests of replibook.data.augment.patch_mask."""
import pytest
import torch

from replibook.data.augment import patch_mask


@pytest.mark.parametrize("ratio,patch,expected", [(0.7, 2, 44), (0.0, 2, 0), (1.0, 4, 16),
                                                  (0.25, 4, 4), (0.9, 2, 57)])
def test_exact_number_of_masked_patches_per_image(ratio, patch, expected):
    x = torch.rand(8, 3, 16, 16) + 1.0          # strictly positive, so masked pixels are exact 0
    out, mask = patch_mask(x, ratio, patch, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (8, 16 // patch, 16 // patch) and mask.dtype == torch.bool
    assert (mask.flatten(1).sum(1) == expected).all()
    pixels = mask.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, None].expand_as(x)
    assert (out[pixels] == 0).all()                     # masked: every channel filled
    assert torch.equal(out[~pixels], x[~pixels])        # visible: untouched
    assert out.shape == x.shape


def test_masks_differ_between_images_and_are_reproducible():
    x = torch.ones(16, 1, 16, 16)
    _, m1 = patch_mask(x, 0.5, 2, generator=torch.Generator().manual_seed(3))
    _, m2 = patch_mask(x, 0.5, 2, generator=torch.Generator().manual_seed(3))
    _, m3 = patch_mask(x, 0.5, 2, generator=torch.Generator().manual_seed(4))
    assert torch.equal(m1, m2) and not torch.equal(m1, m3)
    assert len({tuple(m.flatten().tolist()) for m in m1}) > 1


def test_every_patch_is_equally_likely():
    x = torch.ones(4000, 1, 8, 8)
    _, mask = patch_mask(x, 0.25, 2, generator=torch.Generator().manual_seed(0))
    freq = mask.float().mean(0)                    # each of 16 patches masked ~25% of the time
    assert (freq - 0.25).abs().max() < 0.04


def test_fill_value_and_bad_input():
    x = torch.rand(2, 1, 8, 8)
    out, mask = patch_mask(x, 0.5, 4, fill=-1.0)
    assert (out[mask.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None]] == -1.0).all()
    with pytest.raises(ValueError):
        patch_mask(x, 0.5, 3)
    with pytest.raises(ValueError):
        patch_mask(x, 1.5, 2)
    with pytest.raises(ValueError):
        patch_mask(x[0], 0.5, 2)
