"""SOFT (Lu et al. 2021): Newton-Raphson pinv and its gradient, the Gaussian kernel, the
Gaussian-Nystrom attention (known answers, shapes, gradients, masks), and the chapter's glue."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from replibook.errors import DatasetMissing
from replibook.methods import softmax_free_transformer as S
from replibook.models import attention as A
from replibook.models.vit import TinyViT, TokenTransformer


def _spread_kernel(m=16, d=8, scale=1.0, seed=0):
    """A Gaussian kernel matrix of ``m`` random points: well conditioned when the points are spread."""
    x = torch.randn(m, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    return S.gaussian_kernel(x, x)


# ------------------------------------------------------------------------ Newton-Raphson

def test_newton_pinv_matches_torch_pinv_of_the_regularised_kernel():
    a = _spread_kernel(16, 8, scale=0.5)
    ref = torch.linalg.pinv(a + 0.01 * torch.eye(16, dtype=torch.float64))
    v = S.newton_pinv(a)                                     # 20 iterations, reg 0.01 (SOFT code)
    assert float((v - ref).norm() / ref.norm()) < 1e-3


def test_newton_iterations_follow_the_official_initialisation():
    a = _spread_kernel(6, 4)
    alpha = 0.9 * 2 / a.sum(-1).max() ** 2
    v0 = S.newton_iterations(a, iters=0, reg=0.01)
    torch.testing.assert_close(v0, alpha * (a + 0.01 * torch.eye(6, dtype=torch.float64)))
    v1 = S.newton_iterations(a, iters=1, reg=0.01)
    p = a + 0.01 * torch.eye(6, dtype=torch.float64)
    torch.testing.assert_close(v1, 2 * v0 - v0 @ p @ v0)


def test_newton_residuals_decrease_and_ill_conditioning_slows_convergence():
    good = S.newton_residuals(_spread_kernel(16, 8, scale=1.0))
    bad = S.newton_residuals(_spread_kernel(16, 8, scale=0.05))    # close points: near-singular
    assert good.shape == (21,) and np.all(np.diff(good[good > 1e-10]) <= 1e-12)
    assert good[-1] < 1e-8 < bad[-1] < bad[0]


def test_newton_pinv_backward_is_the_inverse_gradient():
    a = _spread_kernel(8, 6, scale=0.7).requires_grad_(True)
    g = torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (grad_ours,) = torch.autograd.grad((S.newton_pinv(a, 40) * g).sum(), a)
    (grad_ref,) = torch.autograd.grad(
        (torch.linalg.inv(a + 0.01 * torch.eye(8, dtype=torch.float64)) * g).sum(), a)
    torch.testing.assert_close(grad_ours, grad_ref, atol=1e-9, rtol=1e-7)


def test_newton_pinv_batches_over_heads():
    a = torch.stack([_spread_kernel(8, 4, 0.7, s) for s in range(3)]).reshape(1, 3, 8, 8)
    v = S.newton_pinv(a, 40)
    for h in range(3):
        torch.testing.assert_close(v[0, h], torch.linalg.inv(a[0, h] + 0.01 * torch.eye(8, dtype=a.dtype)),
                                   atol=1e-8, rtol=1e-8)


# ------------------------------------------------------------------------ kernel

def test_gaussian_kernel_known_answers():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    k = S.gaussian_kernel(x, x)
    torch.testing.assert_close(k, torch.tensor([[1.0, math.exp(-12.5)], [math.exp(-12.5), 1.0]],
                                               dtype=torch.float64))
    y = torch.randn(2, 5, 7, 3, dtype=torch.float64)
    z = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(S.gaussian_kernel(y, z), torch.exp(-0.5 * torch.cdist(y, z) ** 2))


def test_grid_landmarks_are_block_means():
    t = torch.arange(16.).reshape(1, 1, 16, 1)                      # 4x4 grid, raster order
    lm = S.grid_landmarks(t, (4, 4), 4).flatten()
    torch.testing.assert_close(lm, torch.tensor([2.5, 4.5, 10.5, 12.5]))
    torch.testing.assert_close(S.grid_landmarks(t, (4, 4), 16), t)
    with pytest.raises(ValueError):
        S.grid_landmarks(t, (4, 4), 9)


# ------------------------------------------------------------------------ attention

def test_exact_mode_computes_the_gaussian_kernel_attention():
    torch.manual_seed(0)
    att = S.GaussianNystromAttention(16, 2, exact=True).double()
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    out, maps = att(x, return_maps=True)
    q = att.W_q(x).reshape(2, 10, 2, 8).transpose(1, 2)
    v = att.W_v(x).reshape(2, 10, 2, 8).transpose(1, 2)
    s = torch.exp(-torch.cdist(q, q) ** 2 / (2 * math.sqrt(8)))   # exp(-|q_i - q_j|^2 / (2 sqrt d))
    torch.testing.assert_close(maps, s)
    ref = att.proj((s @ v).transpose(1, 2).reshape(2, 10, 16))
    torch.testing.assert_close(out, ref)
    # symmetric, ones on the diagonal, no row normalisation
    torch.testing.assert_close(maps, maps.transpose(-1, -2))
    torch.testing.assert_close(torch.diagonal(maps, dim1=-2, dim2=-1), torch.ones(2, 2, 10, dtype=torch.float64))


def test_nystrom_form_with_every_token_a_landmark_recovers_the_exact_operator():
    torch.manual_seed(0)
    exact = S.GaussianNystromAttention(16, 2, exact=True).double()
    nys = S.GaussianNystromAttention(16, 2, num_landmarks=16, grid=(4, 4), landmarks="pool",
                                     pinv_iters=60, reg=0.0).double()
    nys.load_state_dict(exact.state_dict())
    x = 3 * torch.randn(2, 16, 16, dtype=torch.float64)           # spread tokens: S well conditioned
    out_e, maps_e = exact(x, return_maps=True)
    out_n, maps_n = nys(x, return_maps=True)
    torch.testing.assert_close(maps_n, maps_e, atol=1e-6, rtol=0)
    torch.testing.assert_close(out_n, out_e, atol=1e-6, rtol=0)


def test_conv_landmarks_follow_the_official_layout():
    att = S.GaussianNystromAttention(32, 2, num_landmarks=16, grid=(8, 8))
    assert att.ratio == (2, 2)
    conv = att.landmark_op
    assert (conv.in_channels, conv.out_channels, conv.groups) == (16, 16, 1)   # full, not depthwise
    assert conv.kernel_size == conv.stride == (2, 2)
    assert S.GaussianNystromAttention(64, 2, num_landmarks=64, grid=(32, 64)).ratio == (4, 8)
    with pytest.raises(ValueError, match="grid"):
        S.GaussianNystromAttention(32, 2, num_landmarks=16)
    with pytest.raises(ValueError, match="square number"):
        S.GaussianNystromAttention(32, 2, num_landmarks=12, grid=(8, 8))
    with pytest.raises(ValueError, match="landmarks must be"):
        S.GaussianNystromAttention(32, 2, landmarks="random", grid=(8, 8))


@pytest.mark.parametrize("local_conv", [0, 3])
def test_soft_attention_shapes_gradients_and_maps(local_conv):
    torch.manual_seed(0)
    att = S.GaussianNystromAttention(32, 2, num_landmarks=16, grid=(8, 8), local_conv=local_conv)
    x = torch.randn(3, 64, 32, requires_grad=True)
    out, maps = att(x, return_maps=True)
    assert out.shape == (3, 64, 32) and maps.shape == (3, 2, 64, 64)
    out.pow(2).mean().backward()
    for name, p in att.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert torch.isfinite(x.grad).all()


def test_soft_is_registered_and_plugs_into_tiny_vit_with_a_cls_token():
    assert "soft" in A.available_attentions()
    torch.manual_seed(0)
    vit = TinyViT(16, 2, 1, 10, dim=32, depth=2, heads=2, attn="soft", cls=True,
                  attn_kwargs={"num_landmarks": 16, "local_conv": 3})
    att = vit.encoder.blocks[0].attn
    assert isinstance(att, S.GaussianNystromAttention)
    assert att.grid == (8, 8) and att.num_prefix_tokens == 1 and att.ratio == (2, 2)
    x = torch.randn(4, 1, 16, 16)
    logits, aux = vit(x, return_attn=True)
    assert logits.shape == (4, 10) and aux["attn"][0].shape == (4, 2, 65, 65)
    F.cross_entropy(logits, torch.arange(4)).backward()
    assert all(p.grad is not None for p in vit.parameters())


def test_soft_with_pooled_landmarks_ignores_padded_tokens():
    torch.manual_seed(0)
    model = TokenTransformer(5, 3, dim=16, depth=2, heads=2, attn="soft", max_len=12,
                             attn_kwargs={"num_landmarks": 4, "landmarks": "pool"}).double()
    x = torch.randn(2, 12, 5, dtype=torch.float64)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[1, 8:] = True
    out = model(x, mask)
    x2 = x.clone()
    x2[1, 8:] = 30 * torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(model(x2, mask), out, atol=1e-8, rtol=0)


def test_soft_vit_is_deterministic_for_a_seed():
    data = S.load_data("digits", device="cpu")
    data.train.x, data.train.y = data.train.x[:64], data.train.y[:64]
    data.test.x, data.test.y = data.test.x[:32], data.test.y[:32]
    kw = dict(img_size=16, patch=2, dim=16, depth=1, heads=2, m=16, steps=3, batch_size=16)
    m1, h1, acc1 = S.train_arm(data, "SOFT", 0, device="cpu", eval_every=3, **kw)
    m2, h2, acc2 = S.train_arm(data, "SOFT", 0, device="cpu", **kw)     # final evaluation only
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2, atol=0, rtol=0)
    assert h1.steps == [0, 3] and h2.steps == [] and acc1 == acc2 == h1.metrics["test_acc"][-1]


@pytest.mark.parametrize("arm", ["softmax", "SOFT", "Nystromformer", "Performer"])
def test_every_arm_builds_the_same_backbone(arm):
    vit = S.build_vit(arm, 32, 4, m=16, init="torch")
    assert vit.grid == (8, 8) and vit.num_prefix_tokens == 0 and vit.pool == "mean"
    assert vit(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="unknown arm"):
        S.arm_attention("flash", 16)


# ------------------------------------------------------------------------ operator study

def test_image_tokens_are_standardised_patches():
    tokens, grid = S.image_tokens("astronaut", size=32, patch=4)
    assert tokens.shape == (64, 16) and grid == (8, 8)
    torch.testing.assert_close(tokens.mean(0), torch.zeros(16, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(tokens.std(0), torch.ones(16, dtype=torch.float64))


def test_nystrom_errors_vanish_when_every_token_is_a_landmark():
    tokens, grid = S.image_tokens("astronaut", size=32, patch=4)
    rows = S.nystrom_errors(tokens, grid, [4, 64], head_dim=8, seed=0)
    assert len(rows) == 8 and {r["kernel"] for r in rows} == {"gaussian", "softmax"}
    exact = {(r["m"], r["kernel"]): r["error"] for r in rows if r["pinv"] == "exact"}
    assert exact[(64, "gaussian")] < 1e-6 and exact[(64, "softmax")] < 1e-6
    assert exact[(4, "gaussian")] > 1e-3


def test_token_grid_is_as_square_as_possible():
    assert S.token_grid(2048) == (32, 64)
    assert S.token_grid(16384) == (128, 128)
    assert S.token_grid(7) == (1, 7)


def test_scaling_benchmark_and_slopes_on_tiny_sizes():
    sizes = {"softmax": [64, 256], "SOFT": [64, 256], "Performer": [64, 256]}
    bench = S.scaling_benchmark(sizes, dim=16, heads=2, m=16, repeats=1, warmup=0)
    assert list(bench.columns) == ["kind", "n", "median_s", "iqr_s", "repeats", "peak_bytes"]
    assert len(bench) == 6 and (bench.median_s > 0).all()
    soft_max = bench[(bench.kind == "softmax") & (bench.n == 256)].peak_bytes.item()
    assert soft_max >= 2 * 2 * 256 * 256 * 4                  # scores + probabilities, two heads
    slopes = S.scaling_slopes(bench, n_min=64)
    assert set(slopes.index) == set(sizes) and slopes.loc["softmax", "memory slope"] > 1.5


# ------------------------------------------------------------------------ data

def test_load_data_pads_and_standardises():
    ds = S.load_data("digits", device="cpu")
    assert ds.train.x.shape == (1437, 1, 16, 16)
    assert abs(float(ds.train.x.mean())) < 1e-4 and abs(float(ds.train.x.std()) - 1) < 1e-3
    with pytest.raises(ValueError, match="unknown dataset"):
        S.load_data("cifar")
    mnist = S.load_data("mnist5k", device="cpu")
    padded = S.load_data("mnist5k_pad32", device="cpu")
    assert mnist.train.x.shape == (4000, 1, 28, 28) and padded.train.x.shape == (4000, 1, 32, 32)
    assert "padded" in padded.info


def _write_image_folder(root, classes=("n01", "n02"), per_class=3, size=(40, 20)):
    """Fake ImageFolder: class c, image i has red = 40 c + i and a green left / blue right half."""
    for split in ("train", "val"):
        for c, cls in enumerate(classes):
            folder = root / "imagenet100" / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                arr = np.zeros((size[1], size[0], 3), dtype=np.uint8)
                arr[..., 0] = 40 * c + i
                arr[:, : size[0] // 2, 1] = 200
                arr[:, size[0] // 2:, 2] = 200
                Image.fromarray(arr).save(folder / f"img{i}.png")
            (folder / "notes.txt").write_text("not an image")


def test_load_image_folder_reads_the_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("REPLIBOOK_CACHE", str(tmp_path / "cache"))
    _write_image_folder(tmp_path / "data")
    ds = S.load_image_folder("imagenet100", size=8, root=tmp_path / "data", device="cpu")
    assert ds.classes == ["n01", "n02"] and ds.train.x.dtype == torch.uint8
    assert ds.train.x.shape == (6, 3, 8, 8) and ds.test.x.shape == (6, 3, 8, 8)
    assert ds.train.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.train.x[:, 0, 4, 4].tolist() == [0, 1, 2, 40, 41, 42]      # red encodes class and index
    # the centre square crop of a 40x20 image keeps the middle 20 columns: green left, blue right
    img = ds.train.x[0]
    assert img[1, 4, 0] == 200 and img[2, 4, 0] == 0 and img[2, 4, 7] == 200 and img[1, 4, 7] == 0
    again = S.load_image_folder("imagenet100", size=8, root=tmp_path / "data", device="cpu", per_class=2)
    assert again.train.x.shape[0] == 4
    assert list((tmp_path / "cache" / "image_folder").glob("*.npz"))


def test_load_image_folder_missing_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetMissing, match="imagenet100"):
        S.load_image_folder("imagenet100", root=tmp_path)


def test_image_normalize_known_answer():
    norm = S.ImageNormalize(mean=(0.5,), std=(0.25,))
    x = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    torch.testing.assert_close(norm(x), torch.tensor([[[[-2.0, 2.0]]]]))
    torch.testing.assert_close(norm(torch.tensor([[[[0.75]]]])), torch.tensor([[[[1.0]]]]))


def test_full_tier_data_path_trains_on_uint8_images(tmp_path, monkeypatch):
    monkeypatch.setenv("REPLIBOOK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REPLIBOOK_DATA", str(tmp_path / "data"))
    _write_image_folder(tmp_path / "data", size=(24, 24))
    ds = S.load_data("imagenet100", size=16, device="cpu")
    assert ds.train.x.dtype == torch.uint8 and ds.train.x.shape == (6, 3, 16, 16)
    model, _, acc = S.train_arm(ds, "SOFT", 0, img_size=16, patch=4, dim=16, depth=1, heads=2, m=4,
                                steps=2, batch_size=4, device="cpu")
    assert isinstance(model[0], S.ImageNormalize) and model[1].head.out_features == 2
    assert 0.0 <= acc <= 1.0
