"""Region normalization (RN-B, RN-L), the EdgeConnect-style generator and the chapter glue."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from replibook.errors import DatasetMissing
from replibook.methods import region_normalization as R
from replibook.models.norm import make_norm, norm_entry


def _features(b=4, c=6, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g) * 3 + 2
    mask = (torch.rand(b, 1, h, w, generator=g) < 0.35).float()
    return x, mask


@pytest.mark.parametrize("batch_stats", [True, False])
def test_region_normalize_gives_zero_mean_unit_variance_in_each_region(batch_stats):
    x, mask = _features()
    y = R.region_normalize(x, mask, batch_stats=batch_stats)
    dims = (0, 2, 3) if batch_stats else (2, 3)
    m = mask.expand_as(x)
    for r in (m, 1 - m):
        n = r.sum(dims, keepdim=True)
        mean = (y * r).sum(dims, keepdim=True) / n
        var = ((y - mean) ** 2 * r).sum(dims, keepdim=True) / n
        assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)
        assert torch.allclose(var, torch.ones_like(var), atol=1e-3)


def test_region_normalize_with_one_region_is_batch_or_instance_norm():
    x, _ = _features()
    empty = torch.zeros(4, 1, 8, 8)
    bn = F.batch_norm(x, None, None, training=True)
    assert torch.allclose(R.region_normalize(x, empty), bn, atol=1e-5)
    inst = R.region_normalize(x, 1 - empty, batch_stats=False)
    assert torch.allclose(inst, F.instance_norm(x), atol=1e-5)


def test_region_statistics_are_blind_to_the_other_region():
    x, mask = _features()
    y = R.region_normalize(x, mask)
    # any change of the hole pixels leaves the valid region's output unchanged
    x2 = x + mask * 100 * torch.randn_like(x)
    y2 = R.region_normalize(x2, mask)
    assert torch.allclose(y * (1 - mask), y2 * (1 - mask), atol=1e-5)
    # whereas a full-spatial norm (BN without running stats) is shifted by them
    full = F.batch_norm(x, None, None, training=True)
    full2 = F.batch_norm(x2, None, None, training=True)
    assert (full * (1 - mask) - full2 * (1 - mask)).abs().max() > 0.1


@pytest.mark.parametrize("batch_stats", [True, False])
def test_fused_region_norm_equals_reference_values_and_gradients(batch_stats):
    x, mask = _features(b=2, c=3, h=5, w=5, seed=3)
    x = x.double().requires_grad_()
    mask = mask.double()
    def fused(z):
        return R.region_normalize_fused(z, mask, 1e-5, batch_stats)
    assert torch.autograd.gradcheck(fused, (x,))
    a = R.region_normalize_fused(x, mask, batch_stats=batch_stats)
    b = R.region_normalize(x, mask, batch_stats=batch_stats)
    assert torch.allclose(a, b, atol=1e-10)
    w = torch.randn_like(a)
    ga, = torch.autograd.grad((a * w).sum(), x)
    gb, = torch.autograd.grad((b * w).sum(), x)
    assert torch.allclose(ga, gb, atol=1e-8)


def test_rn_b_is_registered_resizes_the_mask_and_starts_as_identity_affine():
    assert norm_entry("rn_b").factory is R.RegionNormB
    assert norm_entry("rn-l").factory is R.RegionNormL
    layer = make_norm("rn_b", 6)
    x, _ = _features(h=8, w=8)
    big_mask = torch.zeros(4, 1, 32, 32)
    big_mask[:, :, :16] = 1                                  # top half is the hole
    y = layer(x, big_mask)
    small = F.interpolate(big_mask, size=(8, 8), mode="nearest")
    assert torch.allclose(y, R.region_normalize(x, small), atol=1e-5)
    # per-region affine: gamma/beta of the hole act only on hole pixels
    with torch.no_grad():
        layer.beta_hole.fill_(3.0)
        layer.gamma_valid.fill_(1.0)
    y2 = layer(x, big_mask)
    base = R.region_normalize(x, small)
    assert torch.allclose(y2 * small, (base + 3.0) * small, atol=1e-5)
    assert torch.allclose(y2 * (1 - small), 2 * base * (1 - small), atol=1e-5)


def test_rn_l_threshold_regions_gradients_and_fraction():
    torch.manual_seed(0)
    layer = R.RegionNormL(6)
    x, _ = _features()
    x.requires_grad_()
    y = layer(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # the response conv learns only through the affine branch (the threshold has no gradient)
    assert layer.response.weight.grad is not None and layer.affine_conv.weight.grad is not None
    frac = float(layer.last_region_fraction)
    assert 0.0 <= frac <= 1.0
    # with the affine convs at zero, RN-L is exactly region normalization with M' = 1[S >= t]
    with torch.no_grad():
        layer.affine_conv.weight.zero_()
        layer.affine_conv.bias.zero_()
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        m = (torch.sigmoid(layer.response(pooled)) >= 0.8).float()
        assert torch.allclose(layer(x), R.region_normalize(x, m), atol=1e-5)


@pytest.mark.parametrize("variant", list(R.VARIANTS))
def test_generator_shapes_range_and_gradients(variant):
    torch.manual_seed(0)
    g = R.make_generator(variant, width=4, res_blocks=1)
    x = torch.rand(3, 3, 16, 16)
    m = torch.zeros(3, 1, 16, 16)
    m[:, :, 4:10, 4:12] = 1
    out = g(x, m)
    assert out.shape == x.shape
    assert float(out.detach().min()) >= 0.0 and float(out.detach().max()) <= 1.0
    R.inpainting_loss(out, x, m).backward()
    grads = [p.grad for p in g.parameters() if p.requires_grad]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)


def test_generator_sees_only_valid_pixels_and_the_mask():
    torch.manual_seed(0)
    g = R.make_generator("RN-B+RN-L", width=4, res_blocks=1).eval()
    x = torch.rand(2, 3, 16, 16)
    m = torch.zeros(2, 1, 16, 16)
    m[:, :, 2:9, 3:11] = 1
    x_other = x + m * torch.rand_like(x)        # change only the hidden pixels
    assert torch.allclose(g(x, m), g(x_other, m), atol=1e-6)
    # the paper's architecture at width 64 with 8 blocks
    full = R.EdgeConnectLite(width=64, res_blocks=8)
    assert len(full.middle) == 8 and full.enc_conv3.out_channels == 256
    assert isinstance(full.enc_norm1, R.RegionNormB) and isinstance(full.dec_norm2, R.RegionNormL)
    with pytest.raises(ValueError):
        R.make_generator("GN")


def test_loss_composite_and_mean_fill_known_answers():
    x = torch.zeros(1, 3, 4, 4)
    pred = torch.ones(1, 3, 4, 4)
    m = torch.zeros(1, 1, 4, 4)
    m[..., :2, :] = 1                                        # half the image is the hole
    # L1 full = 1, L1 hole = 1 -> 1 + 5 * 1
    assert float(R.inpainting_loss(pred, x, m)) == pytest.approx(6.0)
    c = R.composite(pred, x, m)
    assert torch.equal(c * m, m.expand_as(c)) and float((c * (1 - m)).sum()) == 0.0
    img = torch.zeros(1, 3, 4, 4)
    img[..., 2:, :] = 0.5                                    # valid part is 0.5 everywhere
    filled = R.mean_fill(img, m)
    assert torch.allclose(filled, torch.full_like(img, 0.5))


def test_training_is_deterministic_and_evaluation_reports_every_bin():
    x = torch.rand(24, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    pool = torch.zeros(5, 1, 16, 16)
    for i in range(5):
        pool[i, :, i:i + 6, 2:10] = 1
    runs = [R.train_inpainting("RN-B+RN-L", x, pool, steps=3, batch_size=8, lr=1e-3, seed=1,
                               width=4, res_blocks=1, device="cpu")[0] for _ in range(2)]
    for a, b in zip(runs[0].parameters(), runs[1].parameters()):
        assert torch.equal(a, b)
    test_masks = {"a": pool[:4].repeat(2, 1, 1, 1), "b": pool[1:5].repeat(2, 1, 1, 1)}
    res = R.evaluate_inpainting(runs[0], x[:8], test_masks, batch_size=4)
    assert set(res) == {"a", "b", "mean"}
    assert set(res["a"]) == {"psnr", "ssim", "l1_hole"}
    assert res["mean"]["psnr"] == pytest.approx((res["a"]["psnr"] + res["b"]["psnr"]) / 2)
    frac = R.rnl_region_fraction(runs[0], x[:8], pool[:4].repeat(2, 1, 1, 1))
    assert 0.0 <= frac <= 1.0
    assert np.isnan(R.rnl_region_fraction(R.make_generator("IN", 4, 1), x[:2], pool[:2]))


def test_normalized_region_means_show_the_mean_shift():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(8, 4, 16, 16, generator=g)
    mask = torch.zeros(8, 1, 16, 16)
    mask[:, :, :8] = 1
    feats = feats + 5 * mask                                # the hole has its own, shifted level
    rn = R.normalized_region_means(feats, mask, "rn")
    inn = R.normalized_region_means(feats, mask, "in")
    assert np.abs(rn["valid"]).max() < 1e-5 and np.abs(rn["hole"]).max() < 1e-5
    assert np.allclose(rn["valid_std"], 1, atol=1e-3)
    assert inn["valid"].mean() < -0.5 and inn["hole"].mean() > 0.5     # IN shifts both regions
    assert inn["valid_std"].mean() < 0.5                               # and shrinks their spread
    assert len(rn["valid"]) == 8 * 4
    with pytest.raises(ValueError):
        R.normalized_region_means(feats, mask, "bn")


# ------------------------------------------------------------------- full-tier loaders

def _write_jpegs(paths, size=40):
    from PIL import Image
    for i, p in enumerate(paths):
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size + 8 * (i % 2), size), (10 * i, 100, 200)).save(p, quality=95)


def test_places365_loader_reads_torchvision_layout(tmp_path):
    names = [f"/a/airfield/{i:08d}.jpg 0" for i in range(1, 6)]
    (tmp_path / "places365_train_standard.txt").write_text("\n".join(names) + "\n")
    _write_jpegs([tmp_path / "data_256" / n.split()[0].lstrip("/") for n in names])
    val = [f"Places365_val_{i:08d}.jpg {i}" for i in range(1, 4)]
    (tmp_path / "places365_val.txt").write_text("\n".join(val))
    _write_jpegs([tmp_path / "val_256" / v.split()[0] for v in val])
    x = R.load_photos("places365", "train", 3, 16, seed=0, root=tmp_path, device="cpu")
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.uint8
    assert abs(int(x[0, 1].float().mean()) - 100) <= 2
    assert abs(int(x[0, 2].float().mean()) - 200) <= 2
    assert R.load_photos("places365", "test", 3, 16, root=tmp_path, device="cpu").shape[0] == 3
    with pytest.raises(ValueError):
        R.load_photos("places365", "test", 10, 16, root=tmp_path, device="cpu")
    with pytest.raises(DatasetMissing):
        R.load_photos("places365", "train", 1, 16, root=tmp_path / "nothing", device="cpu")


def test_celeba_loader_reads_the_partition_file(tmp_path):
    base = tmp_path / "celeba"
    rows = [(f"{i:06d}.jpg", p) for i, p in zip(range(1, 8), [0, 0, 0, 1, 2, 2, 0])]
    base.mkdir()
    (base / "list_eval_partition.txt").write_text("\n".join(f"{n} {p}" for n, p in rows))
    _write_jpegs([base / "img_align_celeba" / n for n, _ in rows])
    assert R.load_photos("celeba", "test", 2, 8, root=tmp_path, device="cpu").shape == (2, 3, 8, 8)
    with pytest.raises(ValueError):
        R.load_photos("celeba", "test", 3, 8, root=tmp_path, device="cpu")   # only 2 test images
    assert R.load_photos("celeba", "train", 4, 8, root=tmp_path, device="cpu").shape[0] == 4
    with pytest.raises(ValueError, match="source"):
        R.load_photos("imagenet", "train", 1, 8, root=tmp_path, device="cpu")
