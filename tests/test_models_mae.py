"""models.mae: patch bookkeeping, masking, visible-only encoding equal to TinyViT, loss on masked patches."""
import pytest
import torch

from replibook.models.mae import MAE, encode_visible, patchify, random_masking, unpatchify
from replibook.models.vit import TinyViT


def _vit(**kw):
    torch.manual_seed(0)
    return TinyViT(img_size=16, patch=4, in_chans=1, num_classes=0, dim=32, depth=3, heads=4, **kw)


def test_patchify_round_trip_and_raster_order():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    p = patchify(x, 4)
    assert p.shape == (2, 4, 48)
    assert torch.equal(unpatchify(p, 4, 3, (2, 2)), x)
    # patch 1 is the top-right 4x4 block; its first pixel is channel 0 at (0, 4), channels last
    assert p[0, 1, :3].tolist() == [x[0, 0, 0, 4].item(), x[0, 1, 0, 4].item(), x[0, 2, 0, 4].item()]


def test_random_masking_counts_and_inverse():
    keep, restore, mask = random_masking(5, 16, 0.75, torch.Generator().manual_seed(0))
    assert keep.shape == (5, 4) and mask.shape == (5, 16)
    assert (mask.sum(1) == 12).all()
    for b in range(5):
        assert (mask[b, keep[b]] == 0).all()
    keep2, _, _ = random_masking(5, 16, 0.75, torch.Generator().manual_seed(0))
    assert torch.equal(keep, keep2)
    assert random_masking(1, 16, 0.99)[0].shape == (1, 1)
    with pytest.raises(ValueError):
        random_masking(1, 16, 1.0)


def test_encoding_all_patches_equals_the_vit_and_partial_runs_match_its_layers():
    vit = _vit().eval()
    x = torch.rand(3, 1, 16, 16)
    tokens, layers = encode_visible(vit, x)
    ref, ref_layers, _, _ = vit._encode(vit.patch_embed(x), None, True, False)
    torch.testing.assert_close(tokens, ref)
    part, part_layers = encode_visible(vit, x, upto=2)
    torch.testing.assert_close(part, ref_layers[1])
    assert len(part_layers) == 2
    with pytest.raises(ValueError):
        encode_visible(vit, x, upto=4)


def test_visible_encoding_keeps_true_positions():
    vit = _vit().eval()
    x = torch.rand(2, 1, 16, 16)
    ids = torch.tensor([[3, 7], [3, 7]])
    tokens, _ = encode_visible(vit, x, ids, upto=0)          # no block: embeddings only
    emb = vit.patch_embed(x) + vit.pos_embed[:, 1:]
    torch.testing.assert_close(tokens[:, 1:], emb[:, [3, 7]])
    torch.testing.assert_close(tokens[:, 0], (vit.cls_token + vit.pos_embed[:, :1])[:, 0].expand(2, -1))


def test_loss_counts_only_masked_patches_and_trains():
    torch.manual_seed(1)
    mae = MAE(_vit(), dec_dim=16, mask_ratio=0.75)
    x = torch.rand(4, 1, 16, 16)
    masking = random_masking(4, 16, 0.75, torch.Generator().manual_seed(3))
    out = mae(x, masking=masking)
    target = mae.target(x)
    manual = (((out.pred - target) ** 2).mean(-1) * out.mask).sum() / out.mask.sum()
    assert out.loss.item() == pytest.approx(manual.item(), rel=1e-6)
    # norm_pix targets are standardised per patch
    assert torch.allclose(target.mean(-1), torch.zeros(4, 16), atol=1e-5)
    # a few steps lower the loss on a fixed batch
    opt = torch.optim.AdamW(mae.parameters(), lr=3e-3)
    first = out.loss.item()
    for _ in range(30):
        loss = mae(x, masking=masking).loss
        opt.zero_grad(); loss.backward(); opt.step()
    assert loss.item() < 0.8 * first
    assert out.latent.shape == (4, 1 + 4, 32) and len(out.layers) == 3
